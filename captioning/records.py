"""Record readers shared by the caption and sentence-pair sources: JSON, JSON Lines and CSV, each bad record
reported by file and line (or record index) through `DataReport` and skipped, as the Flickr8k readers do."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captioning.datasets import DataError, DataReport, text_lines


def clean(value: Any) -> str:
    """One-line text with runs of whitespace collapsed; anything that is not a string reads as empty."""
    return " ".join(value.split()) if isinstance(value, str) else ""


def read_json(path: Path) -> Any:
    """A whole JSON document; a file that is missing, not UTF-8 or not JSON is unusable, so it raises."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc


def jsonl_records(path: Path, report: DataReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON-object line; other lines are reported and skipped."""
    for number, line in text_lines(path, report):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            report.add(path, number, f"malformed JSON line ({exc.msg})")
            continue
        if not isinstance(record, dict):
            report.add(path, number, "malformed line: expected a JSON object")
            continue
        yield number, record


def csv_records(path: Path, report: DataReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row by header name) for each CSV row; the header is the first line. A row with more
    fields than the header is reported and skipped (a stray comma would shift the columns)."""
    numbers: list[int] = []

    def lines() -> Iterator[str]:
        for number, line in text_lines(path, report):
            numbers.append(number)
            yield line

    reader = csv.DictReader(lines())
    for row in reader:
        number = numbers[reader.line_num - 1] if reader.line_num else 0
        if None in row:
            report.add(path, number, f"malformed row: more fields than the header {reader.fieldnames}")
            continue
        if not any((value or "").strip() for value in row.values()):
            continue
        yield number, row


def table_records(path: Path, report: DataReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON Lines for `.jsonl`/`.json`, CSV otherwise."""
    if Path(path).suffix.lower() in (".jsonl", ".json"):
        return jsonl_records(path, report)
    return csv_records(path, report)
