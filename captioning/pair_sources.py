"""One reader interface over the sentence-pair formats (`--pairs`, `--pairs-format`): the Tatoeba TSV, JSONL or
CSV with English/Arabic columns, the `datasets` `translation` column (`{"translation": {"en": .., "ar": ..}}`
per line, as OPUS/WMT exports write it), and `datasets` sources (`hf`: `hub:NAME` or a dataset folder, with
either form of columns). Bad lines are reported by file and line (dataset rows by split and row index) and
skipped (`DataReport`). An optional `split` column decides dev rows (`dev`/`val`/`validation`); `test` rows are
never read; a dataset's test split is never opened."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from captioning.datasets import DataError, DataReport, TranslationPair, read_pairs, text_lines
from captioning.hub_sources import DatasetSplits, HubOptions, batches, is_hub_id
from captioning.records import clean, csv_records, jsonl_records

PAIR_FORMATS = ("tsv", "jsonl", "csv", "translation", "hf")
DEV_SPLITS = {"dev", "val", "valid", "validation"}


@dataclasses.dataclass
class PairSet:
    """The usable pairs: `train`, and `dev` when a split column named some (else the trainer holds out a
    share of `train`); `test_rows` counts the test rows skipped unread."""

    train: list[TranslationPair]
    dev: list[TranslationPair] = dataclasses.field(default_factory=list)
    test_rows: int = 0


def check_pairs_format(fmt: str) -> str:
    if fmt not in PAIR_FORMATS:
        raise DataError(f"unknown pairs format {fmt!r}; accepted: {', '.join(PAIR_FORMATS)}")
    return fmt


def detect_pairs_format(path: Path) -> str:
    """`hub:NAME` and a folder are `datasets` sources; `.tsv`/`.txt` is the Tatoeba TSV, `.csv` is CSV;
    `.jsonl`/`.json` is the `translation` form when its first record has a `translation` object, else flat
    JSONL columns."""
    if is_hub_id(path) or Path(path).is_dir():
        return "hf"
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        for _, line in text_lines(path, DataReport()):
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return "jsonl"
                return "translation" if isinstance(first, dict) and "translation" in first else "jsonl"
        return "jsonl"
    raise DataError(
        f"{path}: cannot tell the pairs format; pass --pairs-format, one of {', '.join(PAIR_FORMATS)}"
    )


def read_pair_source(
    path: str | Path,
    fmt: str | None = None,
    report: DataReport | None = None,
    source_column: str = "en",
    target_column: str = "ar",
    hub: HubOptions | None = None,
) -> PairSet:
    """The pairs at `path`; `fmt` forces the format, else `detect_pairs_format`. A file with nothing usable
    raises `DataError` naming it."""
    report = report or DataReport()
    fmt = check_pairs_format(fmt) if fmt else detect_pairs_format(path)
    if fmt == "hf":
        return _dataset_pairs(
            DatasetSplits(path, hub or HubOptions()), (source_column, target_column), report
        )
    path = Path(path)
    if fmt == "tsv":
        return PairSet(read_pairs(path, report))
    pairs = PairSet([])
    records = csv_records(path, report) if fmt == "csv" else jsonl_records(path, report)
    for number, record in records:
        fields = record.get("translation") if fmt == "translation" else record
        _add_pair(pairs, path, number, record, fields, (source_column, target_column), report)
    if not pairs.train and not pairs.dev:
        raise DataError(f"{path}: no usable sentence pairs")
    return pairs


def _add_pair(
    pairs: PairSet,
    path: Path,
    number: int,
    record: dict[str, Any],
    fields: Any,
    columns: tuple[str, str],
    report: DataReport,
) -> None:
    """One record into `pairs`, or a report naming the line."""
    split = clean(record.get("split")).lower()
    if split == "test":
        pairs.test_rows += 1
        return
    if not isinstance(fields, dict) or not all(c in fields for c in columns):
        report.add(path, number, f"malformed record: expected {columns[0]!r} and {columns[1]!r} fields")
        return
    source, target = clean(fields[columns[0]]), clean(fields[columns[1]])
    if not source or not target:
        report.add(path, number, "empty source or target text")
        return
    if split and split not in DEV_SPLITS and split != "train":
        report.add(path, number, f"unknown split {record.get('split')!r}")
        return
    (pairs.dev if split in DEV_SPLITS else pairs.train).append(TranslationPair(source, target))


def _dataset_pairs(splits: DatasetSplits, columns: tuple[str, str], report: DataReport) -> PairSet:
    """The train split, and the dev split when the dataset has one (else the trainer holds out a share)."""
    pairs = PairSet(_split_pairs(splits, splits.resolve("train", training=True), columns, report))
    dev = splits.resolve("dev", training=True)
    if dev is not None:
        pairs.dev = _split_pairs(splits, dev, columns, report)
    if not pairs.train:
        raise DataError(f"{splits.label}: no usable sentence pairs in the {splits.options.train_split} split")
    return pairs


def _split_pairs(
    splits: DatasetSplits, name: str, columns: tuple[str, str], report: DataReport
) -> list[TranslationPair]:
    """One split's pairs from `columns`, or from a `translation` column holding them as keys."""
    dataset = splits.open(name)
    flat = all(c in dataset.column_names for c in columns)
    if not flat and "translation" not in dataset.column_names:
        raise DataError(
            f"{splits.label}: the {name} split has neither {columns[0]!r}/{columns[1]!r} columns nor a "
            f"'translation' column (see --source-column/--target-column); columns: "
            f"{', '.join(dataset.column_names)}"
        )
    found: list[TranslationPair] = []
    for start, table in batches(dataset, list(columns) if flat else ["translation"]):
        records = table.to_pylist()
        for offset, record in enumerate(records):
            fields = record if flat else record["translation"]
            row = start + offset
            if not isinstance(fields, dict) or not all(c in fields for c in columns):
                problem = f"malformed record: expected {columns[0]!r} and {columns[1]!r} keys"
                report.add(splits.label, row, problem, f"{name}[{row}]")
                continue
            source, target = clean(fields[columns[0]]), clean(fields[columns[1]])
            if not source or not target:
                report.add(splits.label, row, "empty source or target text", f"{name}[{row}]")
                continue
            found.append(TranslationPair(source, target))
    return found
