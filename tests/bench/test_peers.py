"""The bench's peers: CTranslate2 conversion of a fixture checkpoint offline (with and without a vocabulary map),
its lengths matching generate()'s fixed lengths, and the peer tables when a peer is not installed."""

from __future__ import annotations

import sys

import pytest

from captioning import contract
from captioning.bench import comparison, ctranslate

pytest.importorskip("ctranslate2", reason=ctranslate.INSTALL_HINT)


@pytest.fixture(scope="module")
def mbart(fixture_checkpoints):
    import torch
    from transformers import AutoTokenizer, MBartForConditionalGeneration

    from captioning.runtime.tokenization import spm_protobuf_compat

    torch.manual_seed(0)
    with spm_protobuf_compat():
        tokenizer = AutoTokenizer.from_pretrained(fixture_checkpoints.mbart, src_lang=contract.SOURCE_LANG)
    model = MBartForConditionalGeneration.from_pretrained(fixture_checkpoints.mbart).eval()
    return tokenizer, model


def _generate(tokenizer, model, texts, beams, tokens):
    import torch

    target = tokenizer.convert_tokens_to_ids(contract.TARGET_LANG)
    with torch.inference_mode():
        source = tokenizer(texts, return_tensors="pt", padding=True)
        ids = model.generate(
            **source,
            forced_bos_token_id=target,
            num_beams=beams,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
        )
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def test_conversion_decodes_generates_fixed_length_tokens(fixture_checkpoints, mbart, tmp_path, shared_data):
    from captioning.datasets import read_captions

    tokenizer, model = mbart
    texts = [c[0] for c in list(read_captions(shared_data / "flickr8k" / "captions.txt").values())[:12]]
    model_dir = ctranslate.convert(fixture_checkpoints.mbart, tmp_path, "float32")
    assert (model_dir / "model.bin").is_file()
    assert ctranslate.convert(fixture_checkpoints.mbart, tmp_path, "float32") == model_dir  # cached
    engine = ctranslate.CT2Translator(model_dir, tokenizer, threads=1)
    # Greedy fp32: the same arithmetic, so the same tokens (up to float noise on a near-tie).
    outputs = engine.translate(texts, beams=1, new_tokens=8, batch_size=4)
    reference = _generate(tokenizer, model, texts, beams=1, tokens=8)
    assert sum(a == b for a, b in zip(outputs, reference, strict=True)) >= len(texts) - 1
    # The decoded lengths are generate()'s: the language code and the forced end token are not text.
    assert [len(tokenizer(o).input_ids) for o in outputs] == [len(tokenizer(r).input_ids) for r in reference]


def test_vocabulary_map_keeps_decoding_inside_the_kept_tokens(fixture_checkpoints, mbart, tmp_path):
    tokenizer, _ = mbart
    arabic = [
        i for i in range(len(tokenizer)) if any("\u0600" <= ch <= "\u06ff" for ch in tokenizer.decode([i]))
    ]
    kept = sorted(set(arabic[:40]) | {tokenizer.convert_tokens_to_ids(contract.TARGET_LANG)})
    tokens = tokenizer.convert_ids_to_tokens(kept)
    model_dir = ctranslate.convert(fixture_checkpoints.mbart, tmp_path, "int8", tokens)
    assert model_dir != ctranslate.convert(fixture_checkpoints.mbart, tmp_path, "int8")  # its own cache key
    engine = ctranslate.CT2Translator(model_dir, tokenizer, threads=1, use_vmap=True)
    texts = ["A dog runs on the beach .", "Two children play football in a park ."]
    for hypothesis in engine.translate_tokens(texts, beams=2, new_tokens=6, batch_size=2):
        assert hypothesis[0] == contract.TARGET_LANG and len(hypothesis) == 5
        assert set(hypothesis) <= set(tokens), hypothesis


def test_missing_ctranslate2_is_said_plainly(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    assert ctranslate.available() == ctranslate.INSTALL_HINT
    results = {
        "runs": [],
        "peers": [
            {
                "name": "generate() one at a time",
                "stage": "translation",
                "skipped": None,
                "rate": {"median": 2.0, "min": 1.0, "max": 3.0},
                "outputs": ["a", "b"],
            },
            {
                "name": "CTranslate2 fp32, batches of 16",
                "stage": "translation",
                "skipped": ctranslate.INSTALL_HINT,
            },
        ],
    }
    table = "\n".join(comparison.format_peers(results))
    assert f"skipped: {ctranslate.INSTALL_HINT}" in table
    (line,) = [row for row in table.splitlines() if row.startswith("generate() one at a time")]
    assert line.split()[5:9] == ["2.000", "[1.000-3.000]", "1.00x", "2/2"]  # the reference itself
    assert "whole pipeline" not in table  # no pipeline row was measured


def test_agreement_counts_equal_outputs() -> None:
    assert comparison.agreement(["a", "b", "c"], ["a", "x", "c"]) == "2/3"
    pairs = [{"english": "e", "arabic": "a"}, {"english": "e", "arabic": "b"}]
    assert comparison.agreement(pairs, [{"english": "e", "arabic": "a", "image": "1.jpg"}] * 2) == "1/2"
    assert comparison.agreement(None, ["a"]) == "-" and comparison.agreement(["a"], ["a", "b"]) == "-"


def test_a_trimmed_repository_gives_ctranslate2_its_kept_ids(tmp_path) -> None:
    from captioning.bench.peers import kept_ids_of
    from captioning.decoding import VocabMap

    plain, trimmed = tmp_path / "plain", tmp_path / "trimmed"
    (trimmed / contract.TRANSLATOR_MODEL / "1").mkdir(parents=True)
    plain.mkdir()
    VocabMap((0, 2, 5, 9), full_size=12).save(trimmed / contract.TRANSLATOR_MODEL / "1" / "vocab.json")
    assert kept_ids_of([("exact", plain)]) is None
    assert kept_ids_of([("exact", plain), ("trim", trimmed)]) == [0, 2, 5, 9]


def test_ids_past_the_tokenizer_get_the_converters_placeholder_names(mbart) -> None:
    tokenizer, _ = mbart
    known = len(tokenizer.get_vocab())
    assert ctranslate.kept_tokens(tokenizer, [0, 2, known, known + 3]) == [
        "<s>",
        "</s>",
        "<unwritten_0>",
        "<unwritten_3>",
    ]
