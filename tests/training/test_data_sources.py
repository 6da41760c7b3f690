"""The caption and sentence-pair sources behind `--data` / `--pairs`: every format on small files written here
and on the shared Flickr8k data converted to COCO, Karpathy and imagefolder form (the same examples as the
Flickr8k reader), bad records named and skipped, the test split never read for training, format detection, and
the trainers' command lines (one short real run on an imagefolder)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from captioning.caption_sources import detect_caption_format, open_caption_source
from captioning.datasets import CaptionExample, DataError, DataReport, FlickrLayout, TranslationPair
from captioning.pair_sources import detect_pairs_format, read_pair_source

TRAIN_IMAGES, DEV_IMAGES = 40, 20


@pytest.fixture(scope="module")
def flickr(shared_data: Path) -> dict:
    """Flickr8k's own examples for a few present train and dev images, and the test names (never on disk)."""
    layout = FlickrLayout(shared_data / "flickr8k")
    chosen: dict = {"layout": layout}
    for split, count in (("train", TRAIN_IMAGES), ("dev", DEV_IMAGES)):
        examples = layout.examples(split, DataReport(), limit=count)
        chosen[split] = examples
    chosen["test_names"] = (layout.root / "Flickr_8k.testImages.txt").read_text().split()[:3]
    return chosen


def _grouped(examples: list[CaptionExample]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for example in examples:
        out.setdefault(example.image.name, []).append(example.caption)
    return out


def _coco(path: Path, examples: list[CaptionExample], start_id: int = 0) -> Path:
    grouped = _grouped(examples)
    images = [{"id": start_id + i, "file_name": n} for i, n in enumerate(grouped)]
    ids = {image["file_name"]: image["id"] for image in images}
    annotations = [
        {"id": k, "image_id": ids[e.image.name], "caption": e.caption} for k, e in enumerate(examples)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def _karpathy(path: Path, flickr: dict) -> Path:
    images = []
    for split in ("train", "dev"):
        for name, captions in _grouped(flickr[split]).items():
            karpathy_split = {"train": "train", "dev": "val"}[split]
            images.append(
                {"filename": name, "split": karpathy_split, "sentences": [{"raw": c} for c in captions]}
            )
    for name in flickr["test_names"]:
        images.append({"filename": name, "split": "test", "sentences": [{"raw": "a test caption"}]})
    path.write_text(json.dumps({"images": images, "dataset": "flickr8k"}), encoding="utf-8")
    return path


def _imagefolder(root: Path, rows: list[dict], kind: str = "jsonl") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def _link_images(root: Path, examples: list[CaptionExample]) -> None:
    for example in examples:
        if not (root / example.image.name).exists():
            (root / example.image.name).symlink_to(example.image.resolve())


def _named(examples: list[CaptionExample]) -> list[tuple[str, str]]:
    return [(e.image.name, e.caption) for e in examples]


# ---------------------------------------------------------------------------------------------- Flickr8k converted


def test_coco_files_give_flickr8k_examples(flickr, tmp_path):
    images = flickr["layout"].images
    train = _coco(tmp_path / "annotations" / "captions_train2014.json", flickr["train"])
    _coco(tmp_path / "annotations" / "captions_val2014.json", flickr["dev"], start_id=10_000)
    assert detect_caption_format(train) == "coco"
    source = open_caption_source(train, images=images)
    report = DataReport()
    assert source.examples("train", report, training=True) == flickr["train"]
    assert source.examples("dev", report, training=True) == flickr["dev"]
    assert report.issues == []
    # the default image folder: the one named like the file after captions_, beside the annotations folder
    (tmp_path / "val2014").mkdir()
    _link_images(tmp_path / "val2014", flickr["dev"])
    val = open_caption_source(tmp_path / "annotations" / "captions_val2014.json")
    assert _named(val.examples("test", DataReport())) == _named(flickr["dev"])


def test_karpathy_json_gives_flickr8k_examples_and_never_reads_test(flickr, tmp_path):
    path = _karpathy(tmp_path / "dataset_flickr8k.json", flickr)
    assert detect_caption_format(path) == "karpathy"
    source = open_caption_source(path, images=flickr["layout"].images)
    report = DataReport()
    train = source.examples("train", report, training=True)
    dev = source.examples("dev", report, training=True)
    assert train == flickr["train"] and dev == flickr["dev"]
    assert not {e.image.name for e in train + dev} & set(flickr["test_names"])
    assert report.issues == []  # the test images are absent on disk, and never looked at
    with pytest.raises(DataError, match="refused: training never reads the test split"):
        source.examples("test", report, training=True)


def test_imagefolder_gives_flickr8k_examples(flickr, tmp_path):
    for kind in ("jsonl", "csv"):
        root = tmp_path / kind
        rows = [
            {"file_name": e.image.name, "text": e.caption, "split": split}
            for split, key in (("train", "train"), ("validation", "dev"))
            for e in flickr[key]
        ]
        rows += [{"file_name": n, "text": "a test caption", "split": "test"} for n in flickr["test_names"]]
        _imagefolder(root, rows, kind)
        _link_images(root, flickr["train"] + flickr["dev"])
        assert detect_caption_format(root) == "imagefolder"
        source = open_caption_source(root)
        report = DataReport()
        assert _named(source.examples("train", report, training=True)) == _named(flickr["train"])
        assert _named(source.examples("dev", report, training=True)) == _named(flickr["dev"])
        assert report.issues == []


def test_flickr8k_layout_through_the_same_interface(flickr):
    source = open_caption_source(flickr["layout"].root)
    assert source.format == "flickr8k"
    assert source.examples("train", DataReport(), limit=TRAIN_IMAGES, training=True) == flickr["train"]


# ---------------------------------------------------------------------------------------------- small files


def test_imagefolder_without_a_split_column_hashes_a_dev_share(flickr, tmp_path):
    examples = flickr["train"]
    root = _imagefolder(tmp_path / "f", [{"file_name": e.image.name, "text": e.caption} for e in examples])
    _link_images(root, examples)
    source = open_caption_source(root)
    train = source.examples("train", DataReport())
    dev = source.examples("dev", DataReport())
    names = {e.image.name for e in examples}
    assert {e.image.name for e in dev} | {e.image.name for e in train} == names
    assert len({e.image.name for e in dev}) == 2  # 5 % of 40 images
    assert not {e.image.name for e in dev} & {e.image.name for e in train}
    # the rule depends on the names only, not on the order of the rows
    again = _imagefolder(
        tmp_path / "g", [{"file_name": e.image.name, "text": e.caption} for e in examples[::-1]]
    )
    _link_images(again, examples)
    assert {e.image.name for e in open_caption_source(again).examples("dev", DataReport())} == {
        e.image.name for e in dev
    }
    with pytest.raises(DataError, match="no usable captions in the test split"):
        source.examples("test", DataReport())


def test_imagefolder_bad_rows_are_named_and_an_image_in_test_and_train_is_refused(flickr, tmp_path):
    a, b = flickr["train"][0].image.name, flickr["train"][5].image.name
    root = tmp_path / "f"
    root.mkdir()
    (root / "metadata.jsonl").write_bytes(
        b'{"file_name": "%s", "text": "a dog", "split": "train"}\n' % a.encode()
        + b"not json\n"  # 2
        + b'{"file_name": "%s", "text": "   ", "split": "train"}\n' % b.encode()  # 3: empty caption
        + b'{"file_name": "%s", "caption": "x", "split": "train"}\n' % b.encode()  # 4: no text column
        + b'{"file_name": "gone.jpg", "text": "a cat", "split": "train"}\n'  # 5: missing image
        + b'{"file_name": "%s", "text": "caf\xe9", "split": "train"}\n' % b.encode()  # 6: not UTF-8
        + b'{"file_name": "%s", "text": "a dog", "split": "holdout"}\n' % b.encode()  # 7: unknown split
        + b'{"file_name": "%s", "text": "two dogs", "split": "validation"}\n' % b.encode()
    )
    _link_images(root, flickr["train"][:6])
    report = DataReport()
    source = open_caption_source(root)
    assert _named(source.examples("train", report, training=True)) == [(a, "a dog")]
    assert _named(source.examples("dev", report, training=True)) == [(b, "two dogs")]
    meta = root / "metadata.jsonl"
    assert [(i.path, i.line) for i in report.issues] == [(meta, n) for n in (2, 3, 4, 6, 7, 5)]
    assert "gone.jpg not found" in str(report.issues[-1]) and source.missing_images == {"train": 1}
    with meta.open("a") as handle:
        handle.write(json.dumps({"file_name": a, "text": "leak", "split": "test"}) + "\n")
    with pytest.raises(DataError, match="in the test split and in train/dev"):
        open_caption_source(root).examples("train", DataReport(), training=True)


def test_json_bad_records_are_named_by_index_and_nothing_usable_raises(flickr, tmp_path):
    name = flickr["train"][0].image.name
    path = tmp_path / "captions_train2014.json"
    doc = {
        "images": [{"id": 1, "file_name": name}, {"file_name": "no-id.jpg"}],
        "annotations": [
            {"image_id": 1, "caption": "a dog runs"},
            {"image_id": 7, "caption": "unknown image"},
            {"image_id": 1, "caption": ""},
        ],
    }
    path.write_text(json.dumps(doc))
    report = DataReport()
    examples = open_caption_source(path, images=flickr["layout"].images).examples("train", report)
    assert _named(examples) == [(name, "a dog runs")]
    assert [str(i) for i in report.issues] == [
        f"{path} images[1]: image record without 'id' and 'file_name'",
        f"{path} annotations[1]: image_id 7 is not in 'images'",
        f"{path} annotations[2]: empty caption for {name}",
    ]
    doc["annotations"] = doc["annotations"][1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"{path}: no usable captions in the train split"):
        open_caption_source(path, images=flickr["layout"].images).examples("train", DataReport())
    path.write_text("{not json")
    with pytest.raises(DataError, match=f"{path}:1: not JSON"):
        open_caption_source(path).examples("train", DataReport())


def test_caption_format_detection_and_forcing(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    odd = folder / "mine.json"
    odd.write_text(
        json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}]})
    )
    assert detect_caption_format(odd) == "karpathy"
    assert open_caption_source(odd, "karpathy").format == "karpathy"
    with pytest.raises(
        DataError, match="cannot tell the caption format.*flickr8k, coco, karpathy, imagefolder"
    ):
        detect_caption_format(folder)
    with pytest.raises(DataError, match="unknown caption format 'parquet'; accepted: flickr8k, coco"):
        open_caption_source(folder, "parquet")


# ---------------------------------------------------------------------------------------------- pairs

PAIRS = [("Hello.", "مرحبا."), ("I'm tired, very tired.", "أنا متعب جدا.")]


def _expected() -> list[TranslationPair]:
    return [TranslationPair(en, ar) for en, ar in PAIRS]


def test_every_pairs_format_gives_the_same_pairs(tmp_path):
    tsv = tmp_path / "ara.txt"
    tsv.write_text("".join(f"{en}\t{ar}\tCC-BY 2.0\n" for en, ar in PAIRS), encoding="utf-8")
    flat = tmp_path / "pairs.jsonl"
    flat.write_text("".join(json.dumps({"en": en, "ar": ar}) + "\n" for en, ar in PAIRS), encoding="utf-8")
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("en", "ar"), *PAIRS])
    opus = tmp_path / "opus.jsonl"
    opus.write_text(
        "".join(json.dumps({"translation": {"en": en, "ar": ar}}) + "\n" for en, ar in PAIRS),
        encoding="utf-8",
    )
    for path, fmt in ((tsv, "tsv"), (flat, "jsonl"), (table, "csv"), (opus, "translation")):
        assert detect_pairs_format(path) == fmt
        found = read_pair_source(path)
        assert found.train == _expected() and found.dev == [], fmt
    renamed = tmp_path / "renamed.data"
    renamed.write_text("english,arabic\n" + "".join(f'"{en}",{ar}\n' for en, ar in PAIRS), encoding="utf-8")
    found = read_pair_source(renamed, "csv", source_column="english", target_column="arabic")
    assert found.train == _expected()
    with pytest.raises(DataError, match="cannot tell the pairs format.*tsv, jsonl, csv, translation"):
        detect_pairs_format(renamed)
    with pytest.raises(DataError, match="unknown pairs format 'xml'; accepted: tsv, jsonl, csv, translation"):
        read_pair_source(renamed, "xml")


def test_pairs_bad_lines_are_named_and_test_rows_never_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(
        b'{"en": "Hello.", "ar": "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7."}\n'
        + b"{broken\n"  # 2
        + b'{"en": "No Arabic."}\n'  # 3
        + b'{"en": "", "ar": "x"}\n'  # 4
        + b'{"en": "caf\xe9", "ar": "x"}\n'  # 5: not UTF-8
        + b'{"en": "Dev.", "ar": "x", "split": "validation"}\n'
        + b'{"en": "Secret.", "ar": "y", "split": "test"}\n'
    )
    report = DataReport()
    found = read_pair_source(path, report=report)
    assert [p.source for p in found.train] == ["Hello."] and [p.source for p in found.dev] == ["Dev."]
    assert found.test_rows == 1
    assert [(i.path, i.line) for i in report.issues] == [(path, n) for n in (2, 3, 4, 5)]
    empty = tmp_path / "empty.csv"
    empty.write_text("en,ar\n,\nonly english,\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{empty}: no usable sentence pairs"):
        read_pair_source(empty)


# ---------------------------------------------------------------------------------------------- command lines


def test_the_trainers_and_evaluate_parse_the_new_options():
    from captioning.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "train-captioner",
            "--data",
            "d.json",
            "--data-format",
            "coco",
            "--images",
            "imgs",
            "--caption-column",
            "caption",
            "--output",
            "o",
        ]
    )
    assert (args.data_format, args.images, args.caption_column) == ("coco", "imgs", "caption")
    args = parser.parse_args(
        [
            "train-translator",
            "--pairs",
            "p.csv",
            "--pairs-format",
            "csv",
            "--source-column",
            "english",
            "--target-column",
            "arabic",
            "--output",
            "o",
        ]
    )
    assert (args.pairs_format, args.source_column, args.target_column) == ("csv", "english", "arabic")
    args = parser.parse_args(
        ["evaluate", "--checkpoint", "c", "--data", "f", "--data-format", "imagefolder", "--split", "test"]
    )
    assert args.data_format == "imagefolder"
    with pytest.raises(SystemExit):
        parser.parse_args(["train-captioner", "--data", "d", "--data-format", "parquet", "--output", "o"])


def test_train_captioner_runs_on_an_imagefolder(fixture_checkpoints, flickr, tmp_path):
    torch = pytest.importorskip("torch")
    from captioning.cli import main

    train, dev = flickr["train"][:10], flickr["dev"][:5]  # two images each, five captions
    rows = [{"file_name": e.image.name, "text": e.caption, "split": "train"} for e in train]
    rows += [{"file_name": e.image.name, "text": e.caption, "split": "validation"} for e in dev]
    root = _imagefolder(tmp_path / "mine", rows, "csv")
    _link_images(root, train + dev)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["train-captioner", "--model", str(fixture_checkpoints.blip), "--data", str(root)]
        argv += ["--output", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "5"]
        argv += ["--padding", "longest", "--dev-sample", "1", "--no-progress"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["train_captions"] == 10 and metrics["data"]["dev_captions"] == 5
    assert metrics["data"]["skipped"] == 0 and (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_evaluate_reads_the_test_split_of_an_imagefolder(flickr, tmp_path):
    from captioning.training.evaluate import EvalOptions, load_eval_set

    train, test = flickr["train"][:5], flickr["dev"][:10]
    rows = [{"file_name": e.image.name, "text": e.caption, "split": "train"} for e in train]
    rows += [{"file_name": e.image.name, "text": e.caption, "split": "test"} for e in test]
    root = _imagefolder(tmp_path / "mine", rows)
    _link_images(root, train + test)
    found = load_eval_set(EvalOptions(data=root, split="test"), arabic=False)
    assert found.english == _grouped(test) and found.issues.issues == []
