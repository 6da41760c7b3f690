"""The trimmed-vocabulary mode's pieces: the id map, the recipe on a real tokenizer, the trimmed model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from captioning.decoding import GenerationSettings
from captioning.decoding.vocab import VocabMap

SETTINGS = GenerationSettings(
    prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=10, forced_bos_token_id=7
)


def test_remap_moves_every_id_into_kept_positions_and_back():
    vocab = VocabMap.of([9, 1, 2, 7, 2], full_size=12)
    assert vocab.kept_ids == (1, 2, 7, 9)
    remapped = vocab.remap(SETTINGS)
    assert (remapped.prompt_ids, remapped.eos_token_ids, remapped.pad_token_id) == ((1,), (1,), 0)
    assert remapped.forced_bos_token_id == 2 and remapped.forced_eos_token_id is None
    assert vocab.to_full([1, 2, 3, 0]) == [2, 7, 9, 1]
    assert VocabMap.from_dict(vocab.to_dict()) == vocab


def test_remap_names_a_missing_id():
    vocab = VocabMap.of([1, 2], full_size=12)
    with pytest.raises(ValueError, match="forced_bos token id 7"):
        vocab.remap(SETTINGS)


@pytest.mark.parametrize(
    ("ids", "size", "message"),
    [((), 5, "non-empty"), ((1, 9), 5, r"0\.\.4"), ((3, 1), 5, "sorted"), ((-1, 2), 5, r"0\.\.4")],
)
def test_invalid_maps_are_refused(ids, size, message):
    with pytest.raises(ValueError, match=message):
        VocabMap(ids, size)


def test_a_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "kept.json"
    path.write_text('{"kept_ids": [1, 2]}')
    with pytest.raises(ValueError, match="not a trimmed-vocabulary file"):
        VocabMap.load(path)


@pytest.fixture(scope="module")
def mbart(fixture_checkpoints):
    from transformers import AutoTokenizer, MBartForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(fixture_checkpoints.mbart, src_lang="en_XX")
    model = MBartForConditionalGeneration.from_pretrained(fixture_checkpoints.mbart).eval()
    return tokenizer, model


def test_recipe_keeps_corpus_tokens_and_special_ids(mbart, shared_data):
    from captioning.export.vocab_trim import kept_token_ids

    tokenizer, _ = mbart
    sentences = ["رجل يركب دراجة", "كلب أسود يجري في العشب"]
    kept, used = kept_token_ids(tokenizer, sentences, "ar_AR")
    pieces = {t for s in sentences for t in tokenizer(s, add_special_tokens=False)["input_ids"]}
    assert pieces <= kept and used == len(pieces)
    assert tokenizer.convert_tokens_to_ids("ar_AR") in kept
    assert {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id} <= kept
    padded, _ = kept_token_ids(tokenizer, sentences, "ar_AR", pad_to=len(kept) + 100)
    assert len(padded) == len(kept) + 100 and kept <= padded
    with pytest.raises(ValueError, match="no language code"):
        kept_token_ids(tokenizer, sentences, "xx_XX")


def test_trimmed_model_scores_the_kept_columns_of_the_full_model(mbart):
    from captioning.export.vocab_trim import trim_decoder_vocab

    tokenizer, full = mbart
    trimmed = copy.deepcopy(full)
    rng = np.random.default_rng(0)
    vocab = VocabMap.of([*rng.choice(len(tokenizer), 300, replace=False), 0, 1, 2, 3], len(tokenizer))
    trim_decoder_vocab(trimmed, vocab)
    source = tokenizer(["a dog runs on the grass"], return_tensors="pt")
    kept = torch.tensor(vocab.kept_ids)
    positions = torch.tensor([[2, 10, 40, 7]])  # what the trimmed model reads
    decoder_ids = kept[positions]  # the same tokens as tokenizer ids, for the full model
    with torch.no_grad():
        want = full(**source, decoder_input_ids=decoder_ids).logits[..., kept]
        got = trimmed(**source, decoder_input_ids=positions).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the encoder keeps the full shared embedding
    assert trimmed.get_encoder().embed_tokens.weight.shape[0] == len(tokenizer)


def test_trim_vocab_command_writes_a_file_export_accepts(fixture_checkpoints, tmp_path, capsys):
    from captioning.cli import main

    corpus = tmp_path / "arabic.txt"
    corpus.write_text("رجل يركب دراجة\nكلب أسود يجري في العشب\n", encoding="utf-8")
    output = tmp_path / "kept.json"
    code = main(
        [
            "trim-vocab",
            "--translator",
            str(fixture_checkpoints.mbart),
            "--text",
            str(corpus),
            "--output",
            str(output),
        ]
    )
    assert code == 0 and "target ids" in capsys.readouterr().out
    vocab = VocabMap.load(output)
    assert 5 < len(vocab) < 200 < vocab.full_size
    assert main(["trim-vocab", "--translator", str(fixture_checkpoints.mbart), "--output", str(output)]) == 1
