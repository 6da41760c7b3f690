"""Captions from a `datasets` source (`hub:NAME` or a dataset folder, `captioning.hub_sources`), through the
interface of `caption_sources.CaptionSource`: the `CaptionExample`s of a train/dev/test split, bad rows reported
by split and row index (`DataReport`) and skipped, the test split refused for training and never opened.

Only the caption column and the image column's path and null flags are read up front; image bytes stay in the
memory-mapped Arrow files until a batch decodes them (`DatasetImage`). An image cell is a `datasets.Image`
struct (bytes and/or a path), raw bytes, or a path string; a path without bytes is a file on disk, checked and
reported when missing like the other formats' images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioning.caption_formats import captions_of
from captioning.datasets import CaptionExample, DataError, DataReport, ImageLike
from captioning.hub_sources import (
    DatasetImage,
    DatasetSplits,
    HubOptions,
    batches,
    image_column,
    resolve_path,
)

SPLITS = ("train", "dev", "test")
CAPTION_COLUMNS = ("caption", "captions", "text")  # tried in order when --caption-column is not given


class HubCaptionSource:
    """The examples of a `datasets` source by split; a split is opened only when its examples are asked for."""

    format = "hf"

    def __init__(self, location: str | Path, options: HubOptions, caption_column: str | None = None):
        self.splits = DatasetSplits(location, options)
        self.path = self.splits.label
        self.options = options
        self.caption_column = caption_column
        self.missing_images: dict[str, int] = {}

    def examples(
        self, split: str, report: DataReport, limit: int | None = None, training: bool = False
    ) -> list[CaptionExample]:
        """The split's (image, caption) pairs, images in first-seen order, at most `limit` images."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        name = self.splits.resolve(split, training)
        if name is None:
            raise DataError(
                f"{self.path}: no dev split (it has {', '.join(self.splits.names)}); pass --dev-split NAME"
            )
        rows = self._rows(name, report)
        chosen = _select(rows, (split, name), report, limit, self.missing_images, self.path)
        if not chosen:
            raise DataError(f"{self.path}: no usable captions in the {name} split")
        return chosen

    def _rows(self, name: str, report: DataReport) -> list[tuple[ImageLike, str, int]]:
        dataset = self.splits.open(name)
        images = self.options.image_column
        if images not in dataset.column_names:
            raise DataError(
                f"{self.path}: the {name} split has no {images!r} image column (see --image-column); "
                f"columns: {', '.join(dataset.column_names)}"
            )
        captions = self._caption_column(dataset, name)
        reader = _RowReader(self.path, name, images, image_column(dataset, images), self.splits.folder)
        rows: list[tuple[ImageLike, str, int]] = []
        for start, table in batches(dataset, [images, captions]):
            keys = reader.keys(table.column(images))
            for offset, (key, cell) in enumerate(zip(keys, table.column(captions).to_pylist(), strict=True)):
                rows.extend(reader.row(start + offset, key, cell, report))
        return rows

    def _caption_column(self, dataset: Any, name: str) -> str:
        if self.caption_column is not None:
            if self.caption_column not in dataset.column_names:
                raise DataError(
                    f"{self.path}: the {name} split has no {self.caption_column!r} column (see "
                    f"--caption-column); columns: {', '.join(dataset.column_names)}"
                )
            return self.caption_column
        for column in CAPTION_COLUMNS:
            if column in dataset.column_names:
                return column
        raise DataError(
            f"{self.path}: the {name} split has none of the caption columns {', '.join(CAPTION_COLUMNS)}; pass "
            f"--caption-column (columns: {', '.join(dataset.column_names)})"
        )


class _RowReader:
    """Turns one split's image cells and caption cells into (image, caption, row) triples or reports."""

    def __init__(self, label: Path, split: str, column: str, rows: Any, folder: Path | None):
        self.label, self.split, self.column, self.rows, self.folder = label, split, column, rows, folder

    def keys(self, cells: Any) -> list[tuple[str, str] | None]:
        """Per row: ("bytes", path or "") for stored bytes, ("path", path) for a file, None for no image."""
        import pyarrow as pa
        import pyarrow.compute as pc

        kind = cells.type
        if pa.types.is_struct(kind):
            paths = pc.struct_field(cells, "path").to_pylist()
            stored = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist()
            valid = pc.is_valid(cells).to_pylist()
            return [
                None if not ok or not (has or p) else ("bytes", p or "") if has else ("path", p)
                for ok, has, p in zip(valid, stored, paths, strict=True)
            ]
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return [("path", p) if p else None for p in cells.to_pylist()]
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return [("bytes", "") if ok else None for ok in pc.is_valid(cells).to_pylist()]
        raise DataError(
            f"{self.label}: the {self.split} split's {self.column!r} column is not an image ({kind})"
        )

    def row(
        self, index: int, key: tuple[str, str] | None, cell: Any, report: DataReport
    ) -> list[tuple[ImageLike, str, int]]:
        record = f"{self.split}[{index}]"
        if key is None:
            report.add(self.label, index, f"no image in {self.column!r}", record)
            return []
        kind, path = key
        image: ImageLike
        if kind == "path":
            image = resolve_path(path, self.folder)
        else:
            image = DatasetImage(self.split, path or record, index, self.column, self.rows, self.folder)
        out = []
        for caption in captions_of(cell) or [""]:
            if not caption:
                report.add(self.label, index, f"empty caption for {image.name}", record)
                continue
            out.append((image, caption, index))
        return out


def _select(
    rows: list[tuple[ImageLike, str, int]],
    split: tuple[str, str],
    report: DataReport,
    limit: int | None,
    missing: dict[str, int],
    label: Path,
) -> list[CaptionExample]:
    """At most `limit` images in first-seen order; an image file that is not there is reported once and
    counted under the train/dev/test name of `split` (that name, the dataset's)."""
    present: dict[ImageLike, bool] = {}
    kept = 0
    examples = []
    for image, caption, index in rows:
        if image not in present:
            if limit is not None and kept >= limit:
                continue
            present[image] = not isinstance(image, Path) or image.is_file()
            kept += present[image]
            if not present[image]:
                missing[split[0]] = missing.get(split[0], 0) + 1
                report.add(label, index, f"image file {image} not found", f"{split[1]}[{index}]")
        if present[image]:
            examples.append(CaptionExample(image, caption))
    return examples
