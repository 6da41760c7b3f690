"""Readers for the training and evaluation data, with every bad line reported by file and line.

Policy (documented in docs/training.md): a malformed line, an empty caption, text that is not UTF-8 or a
caption whose image file is missing is reported as a warning naming the file and line, and skipped. A run
stops with `DataError` only when a file is missing or nothing usable is left (or with `strict=True`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

LOG = logging.getLogger(__name__)

# The checkout this package was imported from (an editable install); caches and the shared data live beside it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$CAPTIONING_DATA_DIR``, else the ``shared/data`` folder beside the project root."""
    env = os.environ.get("CAPTIONING_DATA_DIR")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


class DataError(ValueError):
    """The data cannot be used at all; the message names the file."""


@dataclasses.dataclass(frozen=True)
class DataIssue:
    path: Path
    line: int
    problem: str
    record: str = ""  # JSON sources: where in the document, e.g. "annotations[12]" (line is then the index)

    def __str__(self) -> str:
        where = f" {self.record}" if self.record else f":{self.line}"
        return f"{self.path}{where}: {self.problem}"


@dataclasses.dataclass
class DataReport:
    """Collects the problems found while reading; logs each one once."""

    strict: bool = False
    issues: list[DataIssue] = dataclasses.field(default_factory=list)
    max_logged: int = 20

    def add(self, path: Path, line: int, problem: str, record: str = "") -> None:
        issue = DataIssue(Path(path), line, problem, record)
        if self.strict:
            raise DataError(str(issue))
        self.issues.append(issue)
        if len(self.issues) <= self.max_logged:
            LOG.warning("skipped %s", issue)
        elif len(self.issues) == self.max_logged + 1:
            LOG.warning("more data problems; only the first %d are logged", self.max_logged)

    def summary(self) -> dict[str, object]:
        return {"skipped": len(self.issues), "issues": [str(i) for i in self.issues[:100]]}


def text_lines(path: Path, report: DataReport) -> Iterator[tuple[int, str]]:
    """Lines of a text file, 1-based; lines that are not UTF-8 are reported and skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.add(path, number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            yield number, text.rstrip("\r\n").lstrip("\ufeff")


def read_captions(path: Path, report: DataReport | None = None) -> dict[str, list[str]]:
    """Flickr8k captions: the Kaggle CSV (`image,caption`) or the original token file (`image#n<TAB>caption`)."""
    report = report or DataReport()
    captions: dict[str, list[str]] = defaultdict(list)
    for number, line in text_lines(path, report):
        if not line.strip() or (number == 1 and line.lower().startswith("image,caption")):
            continue
        if "\t" in line:
            name, _, caption = line.partition("\t")
            name = name.split("#", 1)[0]
        elif "," in line:
            name, _, caption = line.partition(",")  # captions contain commas: split on the first only
        else:
            report.add(path, number, "malformed line: expected 'image,caption' or 'image#n<TAB>caption'")
            continue
        name, caption = name.strip(), " ".join(caption.split())
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            report.add(path, number, f"malformed line: {name[:40]!r} is not an image file name")
            continue
        if not caption:
            report.add(path, number, f"empty caption for {name}")
            continue
        captions[name].append(caption)
    if not captions:
        raise DataError(f"{path}: no usable captions")
    return dict(captions)


def read_arabic_captions(path: Path, report: DataReport | None = None) -> dict[str, list[str]]:
    """Arabic Flickr8k (`image.jpg#n<TAB>caption`). A line without a tab continues the caption before it
    (the shared file has one such stray line); it is joined to that caption and reported."""
    report = report or DataReport()
    captions: dict[str, list[str]] = defaultdict(list)
    last: str | None = None
    for number, line in text_lines(path, report):
        if not line.strip():
            continue
        if "\t" not in line:
            if last is not None and captions[last]:
                captions[last][-1] = f"{captions[last][-1]} {line.strip()}"
                report.add(path, number, f"line without a tab joined to the caption before it ({last})")
            else:
                report.add(path, number, "malformed line: expected 'image#n<TAB>caption'")
            continue
        key, _, caption = line.partition("\t")
        name = key.split("#", 1)[0].strip()
        caption = " ".join(caption.split())
        if not caption:
            report.add(path, number, f"empty caption for {name}")
            continue
        captions[name].append(caption)
        last = name
    if not captions:
        raise DataError(f"{path}: no usable captions")
    return dict(captions)


def read_split(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ImageFile(Protocol):
    """What an example's image is: a `Path`, or a row of an Arrow-backed dataset (`hub_sources.DatasetImage`)
    read only when a batch needs it. Hashable; equal for the same image, so captions group by it."""

    @property
    def name(self) -> str: ...

    def read_bytes(self) -> bytes: ...


ImageLike = Path | ImageFile


def load_image(image: ImageLike) -> Any:
    """The RGB `PIL.Image` of a file or a dataset row; raises `OSError` when it cannot be decoded."""
    from PIL import Image

    source = image if isinstance(image, (str, os.PathLike)) else io.BytesIO(image.read_bytes())
    with Image.open(source) as opened:
        return opened.convert("RGB")


@dataclasses.dataclass(frozen=True)
class CaptionExample:
    image: ImageLike
    caption: str


def flickr_examples(
    images_dir: Path,
    captions: dict[str, list[str]],
    names: list[str],
    report: DataReport | None = None,
    split_file: Path | None = None,
) -> list[CaptionExample]:
    """(image, caption) pairs for the named images; images missing on disk are reported once and skipped."""
    report = report or DataReport()
    examples = []
    for index, name in enumerate(names, start=1):
        path = Path(images_dir) / name
        if name not in captions:
            report.add(split_file or Path(images_dir), index, f"{name} has no captions")
            continue
        if not path.is_file():
            report.add(split_file or Path(images_dir), index, f"image file {path} not found")
            continue
        examples.extend(CaptionExample(path, c) for c in captions[name])
    return examples


@dataclasses.dataclass(frozen=True)
class FlickrLayout:
    """A Flickr8k-layout dataset folder: `Images/`, `captions.txt` (or the token file) and the split files."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "Images"

    @property
    def captions(self) -> Path:
        for name in ("captions.txt", "Flickr8k.token.txt"):
            if (self.root / name).is_file():
                return self.root / name
        raise DataError(f"{self.root}: neither captions.txt nor Flickr8k.token.txt found")

    def split(self, name: str) -> Path:
        return self.root / f"Flickr_8k.{name}Images.txt"

    def examples(
        self, split: str, report: DataReport | None = None, limit: int | None = None
    ) -> list[CaptionExample]:
        report = report or DataReport()
        captions = read_captions(self.captions, report)
        names = read_split(self.split(split))
        present = [n for n in names if (self.images / n).is_file()]
        missing = len(names) - len(present)
        if missing:
            # A partial image folder (like the shared one) is normal: say so once instead of per image.
            LOG.info(
                "%s split: %d of %d images are present in %s", split, len(present), len(names), self.images
            )
        if limit is not None:
            present = present[:limit]
        examples = flickr_examples(self.images, captions, present, report, self.split(split))
        if not examples:
            raise DataError(f"{self.split(split)}: no image of the {split} split is present in {self.images}")
        return examples


@dataclasses.dataclass(frozen=True)
class TranslationPair:
    source: str
    target: str


def read_pairs(path: Path, report: DataReport | None = None) -> list[TranslationPair]:
    """Tab-separated `source<TAB>target[<TAB>attribution...]` (the Tatoeba/Anki format)."""
    report = report or DataReport()
    pairs = []
    for number, line in text_lines(path, report):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            report.add(path, number, "malformed line: expected 'english<TAB>arabic[<TAB>attribution]'")
            continue
        source, target = " ".join(fields[0].split()), " ".join(fields[1].split())
        if not source or not target:
            report.add(path, number, "empty source or target text")
            continue
        pairs.append(TranslationPair(source, target))
    if not pairs:
        raise DataError(f"{path}: no usable sentence pairs")
    return pairs


def split_pairs(
    pairs: list[TranslationPair], held_out: float = 0.05, seed: int = 0
) -> tuple[list[TranslationPair], list[TranslationPair]]:
    """Deterministic train / held-out split."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(len(pairs) * held_out)))
    held = sorted(order[:cut])
    rest = sorted(order[cut:])
    return [pairs[i] for i in rest], [pairs[i] for i in held]
