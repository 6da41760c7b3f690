"""Parsers for the caption layouts users have besides Flickr8k: COCO `captions_*.json`, the Karpathy split JSON
and a `datasets`-style imagefolder. Each turns its file into `CaptionRow`s (image path, caption, split, where it
was read); `captioning.caption_sources` selects splits and builds the examples. Split names are normalised to
train / dev / test (Karpathy's `restval` is train, `val` and `validation` are dev)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from captioning.datasets import DataError, DataReport
from captioning.records import clean, read_json, table_records

SPLIT_NAMES = {
    "train": "train",
    "restval": "train",
    "dev": "dev",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "test": "test",
}
DEV_SHARE = 0.05  # imagefolder without a split column: the dev share of its images


@dataclasses.dataclass(frozen=True)
class CaptionRow:
    image: Path
    caption: str
    split: str  # train, dev or test
    path: Path  # the file it was read from, for reports
    line: int  # line number, or record index for JSON
    record: str = ""  # JSON: where in the document, e.g. "annotations[3]"


def hash_dev_names(names: set[str], share: float = DEV_SHARE) -> set[str]:
    """The deterministic dev images of a set without a split: the `share` (at least one, when there are two
    or more) whose sha256(file name) sorts first. It depends only on the names, never on file order."""
    if len(names) < 2:
        return set()
    ranked = sorted(names, key=lambda name: hashlib.sha256(name.encode("utf-8")).hexdigest())
    return set(ranked[: max(1, round(len(names) * share))])


# ---------------------------------------------------------------------------------------------- COCO


def coco_split(path: Path) -> str:
    """The split a COCO file holds, from its name: `captions_train*` is train, `captions_val*` is dev (and
    what `captioning evaluate --split test` scores: COCO's test images have no public captions)."""
    stem = Path(path).stem.lower()
    for key, split in (("train", "train"), ("val", "dev"), ("test", "test")):
        if key in stem:
            return split
    raise DataError(
        f"{path}: cannot tell the COCO split from the name (expected captions_train*/captions_val*)"
    )


def coco_images_dir(path: Path, images: Path | None) -> Path:
    """`--images`, else the folder named like the file after `captions_` (`captions_train2014.json` ->
    `train2014/`), beside the annotations folder or inside it."""
    if images is not None:
        return Path(images)
    name = Path(path).stem.split("captions_", 1)[-1]
    candidates = [Path(path).parent.parent / name, Path(path).parent / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(f"{path}: image folder not found (tried {tried}); pass --images DIR")


def coco_rows(path: Path, images: Path | None, report: DataReport, split: str) -> list[CaptionRow]:
    """COCO captions: `images` (`id`, `file_name`) and `annotations` (`image_id`, `caption`), as `split`;
    `images` is `--images` (None: `coco_images_dir`'s rule)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise DataError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    images_dir = coco_images_dir(path, images)
    names: dict[Any, str] = {}
    for index, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or "id" not in image or not clean(image.get("file_name")):
            report.add(path, index, "image record without 'id' and 'file_name'", f"images[{index}]")
            continue
        names[image["id"]] = image["file_name"].strip()
    rows = []
    for index, annotation in enumerate(doc["annotations"]):
        record = f"annotations[{index}]"
        if not isinstance(annotation, dict):
            report.add(path, index, "annotation is not an object", record)
            continue
        name = names.get(annotation.get("image_id"))
        if name is None:
            report.add(path, index, f"image_id {annotation.get('image_id')!r} is not in 'images'", record)
            continue
        caption = clean(annotation.get("caption"))
        if not caption:
            report.add(path, index, f"empty caption for {name}", record)
            continue
        rows.append(CaptionRow(images_dir / name, caption, split, Path(path), index, record))
    return rows


# ---------------------------------------------------------------------------------------------- Karpathy


def karpathy_images_dir(path: Path, images: Path | None) -> Path:
    """`--images`, else the JSON's folder, or its `Images/` or `images/` subfolder when it has one."""
    if images is not None:
        return Path(images)
    folder = Path(path).parent
    for name in ("Images", "images"):
        if (folder / name).is_dir():
            return folder / name
    return folder


def karpathy_rows(path: Path, images_dir: Path, report: DataReport) -> list[CaptionRow]:
    """Karpathy split JSON: `images[*]` with `filename`, `filepath` (COCO), `split`, `sentences[*].raw`."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: not a Karpathy split file (needs an 'images' list)")
    rows = []
    for index, image in enumerate(doc["images"]):
        record = f"images[{index}]"
        if not isinstance(image, dict) or not clean(image.get("filename")):
            report.add(path, index, "image record without 'filename'", record)
            continue
        name = image["filename"].strip()
        split = SPLIT_NAMES.get(str(image.get("split", "")).lower())
        if split is None:
            report.add(path, index, f"unknown split {image.get('split')!r} for {name}", record)
            continue
        folder = images_dir / image["filepath"] if clean(image.get("filepath")) else images_dir
        sentences = image.get("sentences")
        for number, sentence in enumerate(sentences if isinstance(sentences, list) else []):
            caption = clean(sentence.get("raw")) if isinstance(sentence, dict) else ""
            if not caption:
                report.add(path, index, f"empty caption for {name}", f"{record}.sentences[{number}]")
                continue
            rows.append(CaptionRow(folder / name, caption, split, Path(path), index, record))
    return rows


# ---------------------------------------------------------------------------------------------- imagefolder


def imagefolder_metadata(root: Path) -> Path:
    for name in ("metadata.jsonl", "metadata.csv"):
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise DataError(f"{root}: an imagefolder needs metadata.jsonl or metadata.csv")


def captions_of(value: Any) -> list[str]:
    """A caption cell: one string, or a JSON list of strings (several captions in one row)."""
    if isinstance(value, list):
        return [clean(v) for v in value]
    return [clean(value)]


def imagefolder_rows(root: Path, caption_column: str, report: DataReport) -> list[CaptionRow]:
    """`metadata.jsonl`/`metadata.csv` rows: `file_name` (relative to the folder), the caption column and an
    optional `split`. Rows without a split get the hash split (`hash_dev_names`): train or dev, never test."""
    metadata = imagefolder_metadata(root)
    rows: list[CaptionRow] = []
    for number, record in table_records(metadata, report):
        name = clean(record.get("file_name"))
        if not name:
            report.add(metadata, number, "row without a file_name")
            continue
        if caption_column not in record:
            report.add(metadata, number, f"no {caption_column!r} caption column (see --caption-column)")
            continue
        raw_split = clean(record.get("split")).lower()
        split = SPLIT_NAMES.get(raw_split, "") if raw_split else "?"
        if not split:
            report.add(metadata, number, f"unknown split {record.get('split')!r} for {name}")
            continue
        for caption in captions_of(record[caption_column]):
            if not caption:
                report.add(metadata, number, f"empty caption for {name}")
                continue
            rows.append(CaptionRow(Path(root) / name, caption, split, metadata, number))
    relative = {row.image: row.image.relative_to(root).as_posix() for row in rows}
    dev = hash_dev_names({relative[row.image] for row in rows if row.split == "?"})
    return [
        dataclasses.replace(row, split="dev" if relative[row.image] in dev else "train")
        if row.split == "?"
        else row
        for row in rows
    ]
