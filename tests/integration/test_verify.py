"""`captioning verify` against the real CPU server: 100% on the fixtures, and a planted difference is reported."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.integration


def _options(server, fixture_checkpoints, flickr_images, **kw):
    from captioning.bench.verify import VerifyOptions

    return VerifyOptions(
        url=server.grpc_url,
        captioner=str(fixture_checkpoints.blip),
        translator=str(fixture_checkpoints.mbart),
        images=flickr_images[0].parent,
        count=8,
        device="cpu",
        **kw,
    )


def test_verify_reports_full_agreement(server, fixture_checkpoints, flickr_images, tmp_path):
    from captioning.bench.verify import format_report, run_verify, write_report

    report = run_verify(_options(server, fixture_checkpoints, flickr_images, caption_num_beams=3))
    assert report["caption_match"] == report["translation_match"] == 1.0
    assert report["passed"] and report["failed"] == 0 and report["images"] == 8
    assert report["served_images_per_s"] > 0 and report["original_images_per_s"] > 0
    text = format_report(report)
    assert "captions equal:     100.0%" in text and text.endswith("PASSED")
    assert json.loads(write_report(report, tmp_path / "r.json").read_text())["images"] == 8


def test_verify_reports_a_planted_mismatch(server, fixture_checkpoints, flickr_images, tmp_path):
    import torch
    from transformers import MBartForConditionalGeneration

    from captioning.bench.verify import format_report, run_verify

    planted = tmp_path / "mbart"
    shutil.copytree(fixture_checkpoints.mbart, planted)
    model = MBartForConditionalGeneration.from_pretrained(str(planted))
    with torch.no_grad():
        model.final_logits_bias.mul_(-1.0)  # a different translator than the one served
    model.save_pretrained(str(planted))
    options = _options(server, fixture_checkpoints, flickr_images)
    report = run_verify(type(options)(**{**options.__dict__, "translator": str(planted)}))
    assert report["caption_match"] == 1.0  # the captioner is the served one
    assert report["translation_match"] < 1.0 and not report["passed"]
    mismatch = report["first_mismatches"][0]
    assert mismatch["served_ar"] != mismatch["expected_ar"]
    assert format_report(report).endswith("FAILED")
