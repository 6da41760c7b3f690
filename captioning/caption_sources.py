"""One reader interface over every caption layout (`--data`, `--data-format`): Flickr8k, COCO, Karpathy JSON,
imagefolder and `datasets` sources (`hub:NAME` or a dataset folder: `captioning.hub_captions`). Each source yields the `CaptionExample`s the Flickr8k reader yields, per split, with the same
bad-line policy (`DataReport`) and the same no-test-leakage rule: a split file, split field or split column
decides; training never reads the test split, and an image that is both test and train/dev is an error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from captioning import caption_formats as formats
from captioning.caption_formats import CaptionRow
from captioning.datasets import CaptionExample, DataError, DataReport, FlickrLayout
from captioning.hub_captions import HubCaptionSource
from captioning.hub_sources import HubOptions, is_hub_id, looks_like_dataset_folder

LOG = logging.getLogger(__name__)

CAPTION_FORMATS = ("flickr8k", "coco", "karpathy", "imagefolder", "hf")
SPLITS = ("train", "dev", "test")


def detect_caption_format(path: Path) -> str:
    """The format a path holds: `hub:NAME` is a Hub dataset; a folder with metadata.jsonl/csv is an imagefolder,
    one with captions.txt (or the token file) is Flickr8k, a `save_to_disk` folder or one of parquet/arrow files
    is a `datasets` folder; a JSON file with `annotations` is COCO, one with `sentences` is Karpathy."""
    if is_hub_id(path):
        return "hf"
    path = Path(path)
    if path.is_dir():
        if any((path / n).is_file() for n in ("metadata.jsonl", "metadata.csv")):
            return "imagefolder"
        if any((path / n).is_file() for n in ("captions.txt", "Flickr8k.token.txt")):
            return "flickr8k"
        if looks_like_dataset_folder(path):
            return "hf"
        raise DataError(
            f"{path}: cannot tell the caption format: a folder needs captions.txt or Flickr8k.token.txt "
            f"(flickr8k), metadata.jsonl/metadata.csv (imagefolder) or datasets' files (hf: save_to_disk or "
            f"parquet/arrow); {_formats_hint()}"
        )
    if not path.is_file():
        raise DataError(f"{path}: not found")
    name = path.name.lower()
    if name.startswith("captions_") and name.endswith(".json"):
        return "coco"
    if name.startswith("dataset_") and name.endswith(".json"):
        return "karpathy"
    if name.endswith(".json"):
        head = path.read_bytes()[: 1 << 16]
        if b'"annotations"' in head:
            return "coco"
        if b'"sentences"' in head:
            return "karpathy"
    raise DataError(f"{path}: cannot tell the caption format; {_formats_hint()}")


def _formats_hint() -> str:
    return f"pass --data-format, one of {', '.join(CAPTION_FORMATS)}"


def check_caption_format(fmt: str) -> str:
    if fmt not in CAPTION_FORMATS:
        raise DataError(f"unknown caption format {fmt!r}; accepted: {', '.join(CAPTION_FORMATS)}")
    return fmt


class CaptionSource:
    """The examples of one dataset by split; each file is read once, so its problems are reported once."""

    def __init__(self, path: Path, fmt: str, files: dict[str, Callable[[DataReport], list[CaptionRow]]]):
        self.path, self.format = Path(path), fmt
        self._files = files  # split -> the loader of the file holding it
        self._rows: dict[int, list[CaptionRow]] = {}
        self.missing_images: dict[str, int] = {}

    def _load(self, split: str, report: DataReport) -> list[CaptionRow]:
        loader = self._files.get(split)
        if loader is None:
            raise DataError(f"{self.path}: this {self.format} source has no {split} split")
        if id(loader) not in self._rows:
            self._rows[id(loader)] = loader(report)
        return self._rows[id(loader)]

    def examples(
        self, split: str, report: DataReport, limit: int | None = None, training: bool = False
    ) -> list[CaptionExample]:
        """The split's (image, caption) pairs, images in first-seen order, at most `limit` images; a missing
        image is reported once and skipped. `training=True` refuses the test split and test-image overlap."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        if training and split == "test":
            raise DataError(f"{self.path}: refused: training never reads the test split")
        rows = self._load(split, report)
        if training:
            _refuse_test_overlap(self.path, rows)
        chosen = _select(rows, split, report, limit, self.missing_images)
        if not chosen:
            raise DataError(f"{self.path}: no usable captions in the {split} split")
        return chosen


def _select(
    rows: list[CaptionRow], split: str, report: DataReport, limit: int | None, missing: dict[str, int]
) -> list[CaptionExample]:
    present: dict[Path, bool] = {}
    examples = []
    for row in rows:
        if row.split != split:
            continue
        if row.image not in present:
            if limit is not None and sum(present.values()) >= limit:
                continue
            present[row.image] = row.image.is_file()
            if not present[row.image]:
                missing[split] = missing.get(split, 0) + 1
                report.add(row.path, row.line, f"image file {row.image} not found", row.record)
        if present[row.image]:
            examples.append(CaptionExample(row.image, row.caption))
    return examples


def _refuse_test_overlap(path: Path, rows: list[CaptionRow]) -> None:
    """An image listed in the test split and in train/dev would leak; that is an error, not a warning."""
    test = {row.image for row in rows if row.split == "test"}
    shared = test & {row.image for row in rows if row.split != "test"}
    if shared:
        raise DataError(
            f"{path}: {len(shared)} images are in the test split and in train/dev, e.g. {sorted(shared)[0]}"
        )


def open_caption_source(
    path: str | Path,
    fmt: str | None = None,
    images: Path | None = None,
    caption_column: str | None = None,
    hub: HubOptions | None = None,
) -> CaptionSource | HubCaptionSource:
    """The source at `path`: `fmt` forces the format, else `detect_caption_format` picks it. `caption_column`
    defaults per format (imagefolder: `text`; hf: the first of `hub_captions.CAPTION_COLUMNS` present)."""
    fmt = check_caption_format(fmt) if fmt else detect_caption_format(path)
    if fmt == "hf":
        return HubCaptionSource(str(path), hub or HubOptions(), caption_column)
    path = Path(path)
    if fmt == "flickr8k":
        return _flickr_source(path)
    if fmt == "coco":
        return _coco_source(path, images)
    if fmt == "karpathy":
        folder = formats.karpathy_images_dir(path, images)

        def karpathy(report: DataReport) -> list[CaptionRow]:
            return formats.karpathy_rows(path, folder, report)

        return CaptionSource(path, fmt, dict.fromkeys(SPLITS, karpathy))

    def imagefolder(report: DataReport) -> list[CaptionRow]:
        return formats.imagefolder_rows(path, caption_column or "text", report)

    return CaptionSource(path, fmt, dict.fromkeys(SPLITS, imagefolder))


def _flickr_source(root: Path) -> CaptionSource:
    """Flickr8k through the same interface: the split files decide; the layout's own reader builds rows."""
    layout = FlickrLayout(root)

    def split_loader(split: str) -> Callable[[DataReport], list[CaptionRow]]:
        def load(report: DataReport) -> list[CaptionRow]:
            examples = layout.examples(split, report)
            return [CaptionRow(e.image, e.caption, split, layout.split(split), 0) for e in examples]

        return load

    return CaptionSource(root, "flickr8k", {split: split_loader(split) for split in SPLITS})


def _coco_source(path: Path, images: Path | None) -> CaptionSource:
    """COCO is one file per split, found from either: `captions_train*` is train, `captions_val*` (the same
    name with `val`) is dev; the test split is a `captions_test*` file when there is one, else the val file
    (COCO's test images have no public captions), which `captioning evaluate --split test` then scores."""
    split = formats.coco_split(path)
    names = {s: path.name.replace(_COCO_KEYS[split], _COCO_KEYS[s]) for s in SPLITS}
    files = {s: path.with_name(name) for s, name in names.items()}
    if not files["test"].is_file():
        files["test"] = files["dev"]

    def loader(split: str) -> Callable[[DataReport], list[CaptionRow]]:
        def load(report: DataReport) -> list[CaptionRow]:
            if split == "test" and files["test"] == files["dev"]:
                LOG.info("%s: no COCO test file; the val file is scored as the test split", files["dev"])
            file = files[split]
            return formats.coco_rows(file, images, report, split)

        return load

    return CaptionSource(path, "coco", {split: loader(split) for split in SPLITS})


_COCO_KEYS = {"train": "train", "dev": "val", "test": "test"}
