"""`datasets` sources (`hub:NAME` and dataset folders, captioning/hub_sources.py): a `save_to_disk` DatasetDict, a
parquet folder and a path-column dataset built here from shared Flickr8k JPEGs give the Flickr8k reader's
examples, image bytes read lazily from Arrow; bad rows are named by split and row and skipped; the test split is
refused for training and never opened (its files here are garbage, so opening it would fail); `hub:` ids reach
`load_dataset` with only the wanted split's data files; sentence pairs from `translation` and en/ar columns;
`train-captioner` and `captioning evaluate` run on a dataset folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from captioning.caption_sources import detect_caption_format, open_caption_source
from captioning.datasets import CaptionExample, DataError, DataReport, FlickrLayout, TranslationPair
from captioning.hub_sources import DatasetImage, HubOptions
from captioning.pair_sources import detect_pairs_format, read_pair_source

datasets = pytest.importorskip("datasets")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TRAIN_IMAGES, DEV_IMAGES = 4, 2


@pytest.fixture(scope="module")
def flickr(shared_data: Path) -> dict:
    layout = FlickrLayout(shared_data / "flickr8k")
    return {split: layout.examples(split, DataReport(), limit=n) for split, n in (("train", 4), ("dev", 2))}


def _named(examples: list[CaptionExample]) -> list[tuple[str, str]]:
    return [(e.image.name, e.caption) for e in examples]


def _image_rows(examples: list[CaptionExample]) -> dict[str, list]:
    """One row per caption, the image stored as a Hub dataset stores it: JPEG bytes and the file name."""
    images = [{"bytes": e.image.read_bytes(), "path": e.image.name} for e in examples]
    return {"image": images, "caption": [e.caption for e in examples]}


def _features():
    return datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})


def _garbage_test_split(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a data file: opening the test split fails")


def _saved_dict(root: Path, flickr: dict, readable_test: bool = False) -> Path:
    """train, validation and test (the dev images again); the test split garbage unless `readable_test`."""
    splits = {"train": flickr["train"], "validation": flickr["dev"], "test": flickr["dev"]}
    built = {s: datasets.Dataset.from_dict(_image_rows(e), features=_features()) for s, e in splits.items()}
    datasets.DatasetDict(built).save_to_disk(str(root))
    for arrow in [] if readable_test else (root / "test").glob("*.arrow"):
        _garbage_test_split(arrow)
    return root


def _parquet_folder(root: Path, flickr: dict) -> Path:
    for split, key in (("train", "train"), ("validation", "dev")):
        table = datasets.Dataset.from_dict(_image_rows(flickr[key]), features=_features())
        (root / "data").mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    _garbage_test_split(root / "data" / "test-00000-of-00001.parquet")
    return root


def test_a_saved_dataset_dict_gives_flickr8k_examples_read_lazily(flickr, tmp_path):
    root = _saved_dict(tmp_path / "saved", flickr)
    assert detect_caption_format(root) == "hf"
    source = open_caption_source(root)
    report = DataReport()
    train = source.examples("train", report, training=True)
    dev = source.examples("dev", report, training=True)
    assert _named(train) == _named(flickr["train"]) and _named(dev) == _named(flickr["dev"])
    assert report.issues == []
    assert all(isinstance(e.image, DatasetImage) for e in train)
    assert len({e.image for e in train}) == TRAIN_IMAGES  # the 5 caption rows of an image are one image
    for example, original in zip(train, flickr["train"], strict=True):
        assert example.image.read_bytes() == original.image.read_bytes()
    with pytest.raises(DataError, match="refused: training never reads the test split"):
        source.examples("test", report, training=True)
    with pytest.raises(DataError, match="refused"):
        open_caption_source(root, hub=HubOptions(train_split="test")).examples("train", report, training=True)


def test_a_parquet_folder_prepares_only_the_splits_it_reads(flickr, tmp_path):
    from captioning.datasets import load_image

    root = _parquet_folder(tmp_path / "parquet", flickr)
    assert detect_caption_format(root) == "hf"
    cache = tmp_path / "cache"
    source = open_caption_source(root, hub=HubOptions(cache_dir=str(cache)))
    report = DataReport()
    assert _named(source.examples("train", report, training=True)) == _named(flickr["train"])
    dev = source.examples("dev", report, limit=1, training=True)
    assert _named(dev) == _named(flickr["dev"][:5])  # one image, its five captions
    assert load_image(dev[0].image).size == load_image(flickr["dev"][0].image).size
    prepared = sorted(p.name for p in cache.rglob("*.arrow"))
    assert prepared and not any("test" in name for name in prepared), prepared


def test_paths_lists_and_named_columns(flickr, tmp_path):
    """A string image column (relative paths) and a list-of-captions column, named by the options."""
    root = tmp_path / "paths"
    grouped: dict[str, list[str]] = {}
    for example in flickr["train"]:
        grouped.setdefault(example.image.name, []).append(example.caption)
        if not (root / "images" / example.image.name).exists():
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / example.image.name).symlink_to(example.image)
    rows = {"picture": [f"images/{n}" for n in grouped], "sentences": list(grouped.values())}
    dev = {"picture": ["images/gone.jpg"], "sentences": [["x"]]}
    built = {"train": datasets.Dataset.from_dict(rows), "dev": datasets.Dataset.from_dict(dev)}
    datasets.DatasetDict(built).save_to_disk(str(root))
    options = HubOptions(image_column="picture")
    source = open_caption_source(root, "hf", caption_column="sentences", hub=options)
    train = source.examples("train", DataReport(), training=True)
    assert _named(train) == _named(flickr["train"]) and all(isinstance(e.image, Path) for e in train)
    report = DataReport()
    with pytest.raises(DataError, match="no usable captions in the dev split"):
        source.examples("dev", report, training=True)
    assert [str(i) for i in report.issues] == [f"{root} dev[0]: image file {root}/images/gone.jpg not found"]
    with pytest.raises(DataError, match="no 'image' image column.*columns: picture, sentences"):
        open_caption_source(root, "hf").examples("train", DataReport())


def test_bad_rows_are_named_by_split_and_row(flickr, tmp_path):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    good = flickr["train"][0].image
    image = {"bytes": good.read_bytes(), "path": good.name}
    rows = {
        "image": [image, None, image, {"bytes": None, "path": "gone.jpg"}, image],
        "text": ["a dog", "no image", "   ", "a missing file", "two dogs"],
    }
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    root = tmp_path / "bad"
    (root / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict(rows, features=features).data.table  # to_parquet stats every path
    pyarrow_parquet.write_table(table, str(root / "data" / "train-0.parquet"))
    report = DataReport()
    source = open_caption_source(root, hub=HubOptions(cache_dir=str(tmp_path / "cache")))
    assert _named(source.examples("train", report, training=True)) == [
        (good.name, "a dog"),
        (good.name, "two dogs"),
    ]
    assert [(i.line, i.record) for i in report.issues] == [(1, "train[1]"), (2, "train[2]"), (3, "train[3]")]
    assert str(report.issues[1]) == f"{root} train[2]: empty caption for {good.name}"
    assert str(report.issues[2]) == f"{root} train[3]: image file {root}/gone.jpg not found"
    assert source.missing_images == {"train": 1}
    with pytest.raises(DataError, match=r"no dev split \(it has train\); pass --dev-split NAME"):
        source.examples("dev", report, training=True)
    with pytest.raises(DataError, match=r"train\[1\]: no image in 'image'"):
        source.examples("train", DataReport(strict=True))


class _FakeBuilder:
    class config:  # noqa: N801 - what `load_dataset_builder(...).config` looks like
        data_files = {
            "train": ["hf://datasets/me/caps@abc/train.parquet"],
            "validation": ["hf://datasets/me/caps@abc/val.parquet"],
            "test": ["hf://datasets/me/caps@abc/test.parquet"],
        }


def test_a_hub_id_reaches_load_dataset_with_only_the_wanted_split(flickr, monkeypatch):
    calls: list[tuple] = []

    def builder(path, name=None, **kwargs):
        calls.append(("builder", path, name, kwargs["revision"]))
        return _FakeBuilder()

    def load(path, name=None, **kwargs):
        calls.append(("load", path, name, kwargs["revision"], kwargs["data_files"], kwargs["split"]))
        return datasets.Dataset.from_dict(_image_rows(flickr["dev"]), features=_features())

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    monkeypatch.setattr(datasets, "load_dataset", load)
    assert detect_caption_format(Path("hub:me/caps")) == "hf" and detect_pairs_format("hub:me/caps") == "hf"
    options = HubOptions(config_name="small", revision="abc")
    source = open_caption_source("hub:me/caps", hub=options)
    assert _named(source.examples("dev", DataReport(), training=True)) == _named(flickr["dev"])
    assert calls == [
        ("builder", "me/caps", "small", "abc"),
        (
            "load",
            "me/caps",
            "small",
            "abc",
            {"validation": _FakeBuilder.config.data_files["validation"]},
            "validation",
        ),
    ]
    with pytest.raises(DataError, match="refused"):
        open_caption_source("hub:me/caps", hub=HubOptions(dev_split="test")).examples(
            "dev", DataReport(), training=True
        )


PAIRS = [("Hello.", "مرحبا."), ("I'm tired.", "أنا متعب.")]


def test_pairs_from_translation_and_en_ar_columns(tmp_path):
    translation = {"translation": [{"en": en, "ar": ar} for en, ar in PAIRS]}
    flat = {"en": [en for en, _ in PAIRS] + [""], "ar": [ar for _, ar in PAIRS] + ["فارغ"]}
    test = datasets.Dataset.from_dict({"en": ["Secret."], "ar": ["سر."]})
    for name, rows in (("translation", translation), ("flat", flat)):
        root = tmp_path / name
        split = {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
        datasets.DatasetDict({**split, "test": test}).save_to_disk(str(root))
        for arrow in (root / "test").glob("*.arrow"):
            _garbage_test_split(arrow)
        assert detect_pairs_format(root) == "hf"
        report = DataReport()
        found = read_pair_source(root, report=report)
        expected = [TranslationPair(en, ar) for en, ar in PAIRS]
        assert found.train == expected and found.dev == expected and found.test_rows == 0
        if name == "flat":
            assert [str(i) for i in report.issues] == [
                f"{root} train[2]: empty source or target text",
                f"{root} validation[2]: empty source or target text",
            ]
    one = tmp_path / "one"
    datasets.Dataset.from_dict({"english": ["Hi."], "arabic": ["مرحبا."]}).save_to_disk(str(one))
    found = read_pair_source(one, "hf", source_column="english", target_column="arabic")
    assert found.train == [TranslationPair("Hi.", "مرحبا.")] and found.dev == []  # the trainer holds out
    with pytest.raises(DataError, match="neither 'en'/'ar' columns nor a 'translation' column"):
        read_pair_source(one, "hf")


def test_the_commands_take_dataset_sources(fixture_checkpoints, flickr, tmp_path):
    torch = pytest.importorskip("torch")
    from captioning.cli import build_parser, main
    from captioning.hub_sources import hub_options_from_args

    argv = [
        "train-captioner",
        "--data",
        "hub:me/caps",
        "--output",
        "o",
        "--split",
        "train2",
        "--dev-split",
        "v",
    ]
    argv += ["--image-column", "img", "--dataset-config", "c", "--dataset-revision", "r"]
    assert hub_options_from_args(build_parser().parse_args(argv)) == HubOptions(
        "img", "train2", "v", "c", "r"
    )
    args = build_parser().parse_args(
        ["train-translator", "--pairs", "hub:me/p", "--output", "o", "--dev-split", "d"]
    )
    assert hub_options_from_args(args) == HubOptions(dev_split="d")
    root = _saved_dict(tmp_path / "saved", flickr, readable_test=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["train-captioner", "--model", str(fixture_checkpoints.blip), "--data", str(root)]
        argv += ["--output", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4"]
        argv += ["--padding", "longest", "--dev-sample", "1", "--no-progress", "--limit-images", "1"]
        assert main(argv) == 0
        output = tmp_path / "report.json"
        argv = [
            "evaluate",
            "--checkpoint",
            str(fixture_checkpoints.blip),
            "--data",
            str(root),
            "--split",
            "test",
        ]
        argv += ["--limit", "1", "--no-meteor", "--no-progress", "--output", str(output)]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["train_captions"] == 5 and metrics["data"]["dev_captions"] == 5
    result = json.loads(output.read_text())
    assert result["images"] == 1 and result["failures"] == {}
    assert result["samples"][0]["image"] == flickr["dev"][0].image.name
    assert result["samples"][0]["references_en"] == [e.caption for e in flickr["dev"][:5]]
