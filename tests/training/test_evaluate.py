"""`captioning evaluate` end to end on a fixture BLIP checkpoint and a handful of shared dev images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from captioning.cli import main
from captioning.training import metrics, report

LIMIT = 5


@pytest.fixture(scope="module")
def evaluated(shared_data, fixture_checkpoints, tmp_path_factory) -> Path:
    """One full evaluation (PTB tokenizer + METEOR when Java is there, else BLEU/CIDEr only)."""
    import torch

    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("evaluate") / "blip.json"
    argv = [
        "evaluate",
        "--checkpoint",
        str(fixture_checkpoints.blip),
        "--data",
        str(shared_data / "flickr8k"),
        "--split",
        "dev",
        "--limit",
        str(LIMIT),
        "--batch-size",
        "2",
        "--no-progress",
        "--output",
        str(output),
    ]
    if shutil.which("java") is None:
        argv.append("--no-meteor")
    assert main(argv) == 0
    return output


def test_report_is_complete(evaluated: Path):
    result = report.load_report(evaluated)
    assert result["images"] == LIMIT
    assert result["settings"]["split"] == "dev" and result["settings"]["limit"] == LIMIT
    assert result["source"]["model"] == "blip"
    assert result["failures"] == {}
    expected = {*metrics.BLEU_KEYS, "CIDEr"} | ({"METEOR"} if shutil.which("java") else set())
    assert set(result["scores"]) == {"en"} and set(result["scores"]["en"]) == expected
    assert len(result["samples"]) == LIMIT
    for sample in result["samples"]:
        assert sample["caption_en"] and len(sample["references_en"]) == 5


def test_captions_are_generate_and_scores_are_coco_scores(evaluated: Path, fixture_checkpoints, shared_data):
    """Sample captions equal `generate()` image by image; scores equal caption_scores on those captions."""
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    result = json.loads(evaluated.read_text(encoding="utf-8"))
    processor = BlipProcessor.from_pretrained(fixture_checkpoints.blip)
    model = BlipForConditionalGeneration.from_pretrained(fixture_checkpoints.blip).eval()
    for sample in result["samples"]:
        image = Image.open(shared_data / "flickr8k" / "Images" / sample["image"]).convert("RGB")
        with torch.inference_mode():
            ids = model.generate(**processor(images=image, return_tensors="pt"), max_length=64)
        assert sample["caption_en"] == processor.decode(ids[0], skip_special_tokens=True).strip()
    hyps = {s["image"]: s["caption_en"] for s in result["samples"]}
    refs = {s["image"]: s["references_en"] for s in result["samples"]}
    java = shutil.which("java") is not None
    if java:
        expected = metrics.caption_scores(hyps, refs, meteor=False)
    else:
        expected = metrics.caption_scores(
            {k: metrics.simple_tokenize(v) for k, v in hyps.items()},
            {k: [metrics.simple_tokenize(r) for r in v] for k, v in refs.items()},
            meteor=False,
            tokenize=False,
        )
    scores = {k: v for k, v in result["scores"]["en"].items() if k != "METEOR"}
    assert scores == pytest.approx(expected)


def test_markdown_table_is_written_beside_the_report(evaluated: Path):
    table = evaluated.with_suffix(".md").read_text(encoding="utf-8")
    name = report.load_report(evaluated)["name"]
    assert f"| {name} | English | Flickr8k dev, {LIMIT} images |" in table
    assert "| original study: Show-Attend-Tell (ResNet-50, attention, beam 3) |" in table
    assert "0.652 | 0.447 | 0.305 | 0.208" in table and "0.496 | 0.263 | 0.135 | 0.077" in table
    assert "test*-split" in table and f"dev split with {LIMIT} images" in table


def test_compare_combines_reports(evaluated: Path, tmp_path: Path, capsys):
    first = report.load_report(evaluated)
    second = dict(first, name="second system", scores={"en": {"BLEU-1": 0.5, "BLEU-4": 0.25}})
    second_path = report.write_json(second, tmp_path / "second.json")
    output = tmp_path / "table.md"
    assert main(["evaluate", "--compare", str(evaluated), str(second_path), "--output", str(output)]) == 0
    table = output.read_text(encoding="utf-8")
    assert table.strip() in capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "System" not in line]
    assert [r.split(" | ")[0][2:] for r in rows][:2] == [first["name"], "second system"]
    assert "| second system | English | Flickr8k dev, 5 images | 0.500 | – | – | 0.250 | – | – |" in table
    assert len(rows) == 4  # two reports + the two published rows


def test_errors_are_reported_not_raised(tmp_path: Path, capsys, shared_data):
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"hello": 1}', encoding="utf-8")
    assert main(["evaluate", "--compare", str(not_a_report)]) == 2
    assert "not a `captioning evaluate` report" in capsys.readouterr().err
    data = ["--data", str(shared_data / "flickr8k"), "--limit", "1", "--output", str(tmp_path / "r.json")]
    assert main(["evaluate", "--checkpoint", str(tmp_path), *data]) == 2
    assert "neither baseline.json nor a transformers config.json" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "captions.txt" in capsys.readouterr().err
