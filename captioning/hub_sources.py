"""`datasets` sources (`--data-format hf` / `--pairs-format hf`): `hub:NAME` (a Hub dataset id) or a local
folder that `datasets` reads. Recognised without `--data-format`: a `save_to_disk` folder (a DatasetDict with
`dataset_dict.json`, or one Dataset with `state.json`, read as its `train` split) and a folder of parquet or
arrow files (at the top or under `data/`, split by file name as on the Hub). Forced with `--data-format hf`: any
folder `load_dataset` reads (json/csv data files, a README `configs:` section). Loading scripts are gone from
`datasets` >= 4, so a dataset script is not a source.

A split is opened only when asked for: `load_dataset` is given that split's own data files (on its own it
prepares every split, the test split included), and a DatasetDict folder's split subfolder is loaded alone, so
training never opens the test split. Rows stay in memory-mapped Arrow files; `DatasetImage` names one row's
image and decodes it when a batch reads it. Streaming is not offered: the trainer needs the number of items and
a permutation per (seed, epoch) to resume exactly, which an `IterableDataset` cannot give.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from captioning.datasets import DataError

HUB_PREFIX = "hub:"
DEV_SPLIT_NAMES = ("validation", "dev", "val", "valid")
_DATA_SUFFIXES = (".parquet", ".arrow")


@dataclasses.dataclass(frozen=True)
class HubOptions:
    """How to read a `datasets` source: columns, split names and the Hub config/revision."""

    image_column: str = "image"
    train_split: str = "train"
    dev_split: str | None = None  # None: the first of DEV_SPLIT_NAMES the dataset has
    config_name: str | None = None
    revision: str | None = None  # branch, tag or commit of a Hub dataset
    cache_dir: str | None = None  # where `load_dataset` prepares Arrow files (None: HF_DATASETS_CACHE)


def add_hub_arguments(parser: argparse.ArgumentParser, *, train_split: bool, image_column: bool) -> None:
    """The `datasets` source options; `train_split` adds `--split` (evaluate has its own `--split`)."""
    group = parser.add_argument_group("hub and local datasets (hub:NAME or a dataset folder)")
    if train_split:
        group.add_argument(
            "--split",
            dest="train_split",
            metavar="NAME",
            default="train",
            help="the dataset split to train on; default: %(default)s (the test split is refused)",
        )
    group.add_argument(
        "--dev-split",
        metavar="NAME",
        help="the dataset split used as dev; default: the first of "
        f"{', '.join(DEV_SPLIT_NAMES)} the dataset has",
    )
    if image_column:
        group.add_argument(
            "--image-column", metavar="COLUMN", default="image", help="image column; default: %(default)s"
        )
    group.add_argument(
        "--dataset-config", metavar="NAME", help="the dataset's config name (load_dataset's `name`)"
    )
    group.add_argument("--dataset-revision", metavar="REV", help="branch, tag or commit of a hub: dataset")


def hub_options_from_args(args: argparse.Namespace) -> HubOptions:
    return HubOptions(
        image_column=getattr(args, "image_column", "image"),
        train_split=getattr(args, "train_split", "train"),
        dev_split=args.dev_split,
        config_name=args.dataset_config,
        revision=args.dataset_revision,
    )


def is_hub_id(location: str | Path) -> bool:
    return str(location).startswith(HUB_PREFIX)


def looks_like_dataset_folder(path: Path) -> bool:
    """A `save_to_disk` folder, or one with parquet/arrow data files at the top or under `data/`."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        return True
    folders = [path, path / "data"]
    return any(f.is_file() and f.suffix in _DATA_SUFFIXES for d in folders if d.is_dir() for f in d.iterdir())


def _datasets():
    try:
        import datasets
    except ImportError as exc:  # the core install has no `datasets`
        raise DataError(
            f"hub and dataset-folder sources need `datasets` ({exc}); install the training extra"
        ) from exc
    return datasets


class DatasetSplits:
    """The splits of one `datasets` source, each opened only when asked for."""

    def __init__(self, location: str | Path, options: HubOptions):
        self.location = str(location)
        self.options = options
        self.label = Path(self.location)  # what reports name
        self.folder = None if is_hub_id(self.location) else Path(self.location)
        self._path = self.location[len(HUB_PREFIX) :] if is_hub_id(self.location) else self.location

    @functools.cached_property
    def _saved(self) -> str | None:
        """`dict` or `dataset` for a `save_to_disk` folder, else None (a `load_dataset` source)."""
        if self.folder is None:
            return None
        if (self.folder / "dataset_dict.json").is_file():
            return "dict"
        return "dataset" if (self.folder / "state.json").is_file() else None

    @functools.cached_property
    def _files(self) -> dict[str, list[str]]:
        """Split name -> data files, resolved by `datasets` without reading any of them."""
        options = self.options
        try:
            builder = _datasets().load_dataset_builder(
                self._path, options.config_name, revision=options.revision, cache_dir=options.cache_dir
            )
        except (OSError, ValueError, ConnectionError) as exc:
            raise DataError(f"{self.label}: cannot open the dataset ({exc})") from exc
        files = builder.config.data_files
        if not files:
            raise DataError(f"{self.label}: the dataset names no data files per split")
        return {str(name): list(found) for name, found in files.items()}  # keys are NamedSplit objects

    @functools.cached_property
    def names(self) -> list[str]:
        if self._saved == "dict":
            return list(json.loads((self.folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])
        if self._saved == "dataset":
            return ["train"]
        return list(self._files)

    def resolve(self, split: str, training: bool = False) -> str | None:
        """The dataset's name for a train/dev/test split; None for a dev split the dataset lacks. Training
        refuses the test split under either name."""
        if split == "train":
            name: str | None = self.options.train_split
        elif split == "dev":
            name = self.options.dev_split or next((n for n in DEV_SPLIT_NAMES if n in self.names), None)
        else:
            name = "test"
        if training and "test" in (split, name):
            raise DataError(f"{self.label}: refused: training never reads the test split")
        return name

    def open(self, name: str) -> Any:
        """One split as an Arrow-backed `datasets.Dataset`; no other split is read."""
        if name not in self.names:
            raise DataError(f"{self.label}: no {name!r} split; it has {', '.join(self.names)}")
        datasets, options = _datasets(), self.options
        try:
            if self._saved is not None:
                return datasets.load_from_disk(
                    str(self.folder / name if self._saved == "dict" else self.folder)
                )
            return datasets.load_dataset(
                self._path,
                options.config_name,
                revision=options.revision,
                data_files={name: self._files[name]},
                split=name,
                cache_dir=options.cache_dir,
            )
        except (OSError, ValueError, ConnectionError) as exc:
            raise DataError(f"{self.label}: cannot read the {name} split ({exc})") from exc


def batches(dataset: Any, columns: list[str], size: int = 1000):
    """(first row index, pyarrow Table) chunks of only `columns`: other columns are never read."""
    selected = dataset.select_columns(columns).with_format("arrow")
    for start in range(0, len(selected), size):
        yield start, selected[start : start + size]


@dataclasses.dataclass(frozen=True)
class DatasetImage:
    """One row's image in an Arrow-backed split, read and decoded only when a batch needs it. Rows whose image
    stores the same file path are the same image (several captions); without a path each row is its own."""

    split: str
    key: str  # the stored file path, else "split[row]"
    row: int = dataclasses.field(compare=False)  # the row read; equal images may sit in several rows
    column: str
    rows: Any = dataclasses.field(compare=False, hash=False, repr=False)  # the split, image column only
    folder: Path | None = dataclasses.field(default=None, compare=False, hash=False)  # for relative paths

    @property
    def name(self) -> str:
        return Path(self.key).name

    def read_bytes(self) -> bytes:
        """The stored (encoded) image bytes, or the file the row's path names."""
        cell = self.rows[self.row].column(self.column)[0].as_py()
        if isinstance(cell, dict):
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, bytes | bytearray):
            return bytes(cell)
        if isinstance(cell, str) and cell:
            return resolve_path(cell, self.folder).read_bytes()
        raise OSError(f"{self.split}[{self.row}]: no image data")


def image_column(dataset: Any, column: str) -> Any:
    """The split's `column` alone, formatted as Arrow: what `DatasetImage` reads its row from."""
    return dataset.select_columns([column]).with_format("arrow")


def resolve_path(path: str, folder: Path | None) -> Path:
    """A stored image path: absolute, or relative to the local dataset folder."""
    found = Path(path)
    return found if found.is_absolute() or folder is None else folder / found
