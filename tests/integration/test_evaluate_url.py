"""`captioning evaluate --url` against the real tritonserver: English and Arabic scores, and the English
scores equal those of evaluating the same BLIP checkpoint directly (served captions equal `generate()`)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from captioning.training import metrics
from captioning.training.evaluate import EvalOptions, evaluate_checkpoint, evaluate_url

pytestmark = pytest.mark.integration
LIMIT = 5


@pytest.fixture(scope="module")
def options(shared_data) -> EvalOptions:
    arabic = shared_data / "arabic_flickr8k" / "Flickr8k.arabic.full.txt"
    if not arabic.is_file():
        pytest.skip(f"Arabic Flickr8k references not found at {arabic}")
    return EvalOptions(
        data=shared_data / "flickr8k",
        split="dev",
        limit=LIMIT,
        arabic_captions=arabic,
        batch_size=LIMIT,
        meteor=shutil.which("java") is not None,
        samples=LIMIT,
        progress=False,
    )


def test_evaluate_url_scores_both_languages(server, options):
    result = evaluate_url(server.http_url, options, protocol="http")
    assert result["failures"] == {}
    assert result["images"] == result["images_arabic"] == LIMIT
    assert set(result["scores"]) == {"en", "ar"}
    expected_keys = {*metrics.BLEU_KEYS, "CIDEr"} | ({"METEOR"} if options.meteor else set())
    assert set(result["scores"]["en"]) == set(result["scores"]["ar"]) == expected_keys
    for sample in result["samples"]:
        assert sample["caption_en"] and len(sample["references_en"]) == 5
        assert sample["caption_ar"] is not None and len(sample["references_ar"]) == 3
    # The Arabic scores are the COCO scores of the normalised served translations.
    hyps = {s["image"]: s["caption_ar"] for s in result["samples"]}
    refs = {s["image"]: s["references_ar"] for s in result["samples"]}
    arabic = {k: v for k, v in result["scores"]["ar"].items() if k != "METEOR"}
    assert arabic == pytest.approx(metrics.arabic_caption_scores(hyps, refs, meteor=False))


def test_served_english_scores_equal_checkpoint_scores(server, options, fixture_checkpoints):
    options = dataclasses.replace(options, meteor=False)  # METEOR is checked above; keep JVM starts few
    served = evaluate_url(server.grpc_url, options, protocol="grpc", lang="en")
    direct = evaluate_checkpoint(fixture_checkpoints.blip, options)
    assert "ar" not in served["scores"]
    assert [s["caption_en"] for s in served["samples"]] == [s["caption_en"] for s in direct["samples"]]
    assert served["scores"]["en"] == pytest.approx(direct["scores"]["en"], abs=1e-12)
