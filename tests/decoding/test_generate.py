"""captioning.decoding.generate against real `transformers` generate() on tiny BLIP and mBART models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import (
    BLIP_BOS,
    MB_LANG,
    MB_START,
    assert_same,
    blip_case,
    mbart_case,
    source,
    tiny_blip,
    tiny_mbart,
)

from captioning.decoding import GenerationSettings, Overrides, generate, generate_steps

from torch_decoders import MBartTorchDecoder, ToyDecoder, mbart_encode, toy_hf_model

TOY_EOS, TOY_PAD = 3, 1


@pytest.fixture(scope="module")
def blip():
    return tiny_blip()


@pytest.fixture(scope="module")
def mbart():
    return tiny_mbart()


@pytest.mark.parametrize("num_beams", [1, 3, 5])
def test_blip_batch_matches_hf(blip, num_beams):
    ours = blip_case(blip, batch=6, seed=1, max_length=20, num_beams=num_beams)
    assert len({len(r) for r in ours}) > 1, "batch items should finish at different lengths"
    assert all(r[0] == BLIP_BOS for r in ours)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_beams=3, length_penalty=2.0, early_stopping=False),
        dict(num_beams=3, length_penalty=-1.0, early_stopping=True),
        dict(num_beams=4, length_penalty=0.5, early_stopping="never"),
        dict(num_beams=3, min_length=8),
        dict(num_beams=1, min_length=8),
        dict(num_beams=3, no_repeat_ngram_size=2),
        dict(num_beams=1, no_repeat_ngram_size=2, repetition_penalty=1.5),
        dict(num_beams=2, repetition_penalty=1.3),
        dict(num_beams=3, max_length=3),
        dict(num_beams=1, max_length=2),
    ],
)
def test_blip_options_match_hf(blip, kwargs):
    kwargs.setdefault("max_length", 16)
    for seed in (2, 3):
        blip_case(blip, batch=4, seed=seed, **kwargs)


def test_blip_long_max_length(blip):
    blip_case(blip, batch=3, seed=4, max_length=64, num_beams=3, no_repeat_ngram_size=3)
    blip_case(blip, batch=3, seed=4, max_length=64, num_beams=1)


@pytest.mark.parametrize("num_beams", [1, 3, 5])
def test_mbart_batch_matches_hf(mbart, num_beams):
    ours = mbart_case(mbart, batch=5, seed=1, max_length=24, num_beams=num_beams, forced_bos_token_id=MB_LANG)
    assert len({len(r) for r in ours}) > 1, "batch items should finish at different lengths"
    assert all(r[:2] == [MB_START, MB_LANG] for r in ours)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_beams=3, length_penalty=2.0, early_stopping=True),
        dict(num_beams=3, length_penalty=0.0, early_stopping="never"),
        dict(num_beams=5, length_penalty=-0.5, early_stopping=False),
        dict(num_beams=3, min_length=10, no_repeat_ngram_size=3),
        dict(num_beams=1, min_length=10),
        dict(num_beams=2, max_length=4),
        dict(num_beams=3, max_length=64, no_repeat_ngram_size=2),
    ],
)
def test_mbart_options_match_hf(mbart, kwargs):
    kwargs.setdefault("max_length", 20)
    kwargs.setdefault("forced_bos_token_id", MB_LANG)
    for seed in (5, 6):
        mbart_case(mbart, batch=4, seed=seed, **kwargs)


def test_beam_search_differs_from_greedy(mbart, blip):
    """Guard against a beam path that silently degenerates to greedy."""
    greedy = mbart_case(mbart, batch=6, seed=7, max_length=20, num_beams=1, forced_bos_token_id=MB_LANG)
    beam = mbart_case(mbart, batch=6, seed=7, max_length=20, num_beams=4, forced_bos_token_id=MB_LANG)
    assert greedy != beam
    greedy = blip_case(blip, batch=6, seed=7, max_length=20, num_beams=1)
    beam = blip_case(blip, batch=6, seed=7, max_length=20, num_beams=4)
    assert greedy != beam


def _mbart_inputs(mbart, batch: int, seed: int, max_length: int, num_beams: int):
    states, mask = mbart_encode(mbart, *source(batch, seed=seed))
    settings = GenerationSettings.from_hf(
        mbart.generation_config,
        prompt_ids=(MB_START,),
        max_length=max_length,
        num_beams=num_beams,
        forced_bos_token_id=MB_LANG,
    )
    return states, mask, settings


def test_batched_equals_single(mbart):
    states, mask, settings = _mbart_inputs(mbart, batch=4, seed=8, max_length=20, num_beams=3)
    decoder = MBartTorchDecoder(mbart)
    batched = generate(decoder, states, mask, settings)
    singles = [generate(decoder, states[i : i + 1], mask[i : i + 1], settings)[0] for i in range(4)]
    assert batched == singles


def test_identical_beams_decode_one_row_persource(mbart):
    """The prompt and the forced language code leave every source's beams identical for two steps; those
    steps decode one row per source (HF equality for this path: test_mbart_batch_matches_hf)."""
    states, mask, settings = _mbart_inputs(mbart, batch=3, seed=9, max_length=8, num_beams=5)
    inner, rows = MBartTorchDecoder(mbart), []

    def recording(input_ids, past, encoder_states, encoder_mask):
        rows.append((input_ids.shape[0], encoder_states.shape[0]))
        return inner(input_ids, past, encoder_states, encoder_mask)

    generate(recording, states, mask, settings)
    assert rows[:3] == [(3, 3), (3, 3), (15, 15)]
    assert all(r == (15, 15) for r in rows[2:])


# --- pure-numpy toy decoder vs the same toy as an HF causal LM -----------------------------------------


def _toy_case(rng: np.random.Generator) -> tuple[list[list[int]], GenerationSettings]:
    vocab = int(rng.integers(8, 16))
    eos_bias = float(rng.choice([0.0, 1.5, 3.0, 6.0]))
    batch = int(rng.integers(1, 5))
    prompt = tuple(int(t) for t in rng.integers(4, vocab, size=int(rng.integers(1, 3))))
    kwargs = dict(
        max_length=len(prompt) + int(rng.integers(1, 10)),
        num_beams=int(rng.choice([1, 2, 3, 4])),
        length_penalty=float(rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0])),
        early_stopping=[True, False, "never"][int(rng.integers(3))],
        min_length=int(rng.choice([0, 0, 4])),
        no_repeat_ngram_size=int(rng.choice([0, 0, 2])),
        repetition_penalty=float(rng.choice([1.0, 1.0, 1.4])),
    )
    items = rng.integers(0, 10_000, size=batch)
    model = toy_hf_model(vocab, eos_bias, TOY_EOS)
    hf = model.generate(
        input_ids=torch.tensor([prompt] * batch),
        attention_mask=torch.ones(batch, len(prompt), dtype=torch.long),
        item=torch.from_numpy(items),
        eos_token_id=TOY_EOS,
        pad_token_id=TOY_PAD,
        use_cache=False,
        **kwargs,
    )
    settings = GenerationSettings(prompt_ids=prompt, eos_token_ids=(TOY_EOS,), pad_token_id=TOY_PAD, **kwargs)
    states = np.zeros((batch, 2, 4), dtype=np.float32)
    states[:, 0, 0] = items
    decoder = ToyDecoder(vocab, eos_bias, TOY_EOS)
    ours = generate(decoder, states, np.ones((batch, 2), dtype=np.int64), settings)
    assert_same(ours, hf, TOY_PAD)
    assert decoder.widths[0] == len(prompt) and set(decoder.widths[1:]) <= {1}
    assert len(decoder.widths) == model.calls, "decoding should stop at the same step as HF"
    _assert_early_answers_are_final(decoder, states, settings, ours)
    return ours, settings


def _assert_early_answers_are_final(decoder, states, settings, final: list[list[int]]) -> None:
    """Run step by step (as in-flight batching does): an item reported final before the search ends already
    holds its final answer."""
    steps = generate_steps(decoder, states, np.ones((len(final), 2), dtype=np.int64), settings)
    early: dict[int, list[int]] = {}
    while True:
        try:
            progress = next(steps)
        except StopIteration as stop:
            assert stop.value == final
            break
        for b in np.flatnonzero(progress.done):
            early.setdefault(int(b), progress.output(int(b)))
    assert all(early[b] == final[b] for b in early), (early, final)
    _EARLY.append(len(early))


_EARLY: list[int] = []


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")
def test_toy_random_settings_match_hf():
    rng = np.random.default_rng(1234)
    early_finish = 0
    for _ in range(200):
        ours, settings = _toy_case(rng)
        early_finish += all(len(r) < settings.max_length for r in ours)
    assert early_finish > 20, "the cases should include batches whose every hypothesis stopped at EOS"
    assert sum(_EARLY) > 50, "the cases should include items answered before their batch ended"


# --- settings -------------------------------------------------------------------------------------------

_BASE = dict(prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=10)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2.0), "num_beams"),
        (dict(max_length=1), "max_length"),
        (dict(prompt_ids=(1, 2, 3), max_length=3), "max_length"),
        (dict(prompt_ids=()), "prompt_ids"),
        (dict(prompt_ids=[2]), "prompt_ids"),
        (dict(eos_token_ids=(-1,)), "eos_token_ids"),
        (dict(pad_token_id=None), "pad_token_id"),
        (dict(min_length=-1), "min_length"),
        (dict(length_penalty=float("nan")), "length_penalty"),
        (dict(early_stopping="sometimes"), "early_stopping"),
        (dict(forced_bos_token_id=-3), "forced_bos_token_id"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
    ],
)
def test_validate_names_the_field(changes, field):
    settings = GenerationSettings(**{**_BASE, **changes})
    with pytest.raises(ValueError, match=field):
        settings.validate()
    with pytest.raises(ValueError, match=field):
        generate(
            ToyDecoder(8, 0.0, TOY_EOS), np.zeros((1, 1, 4), np.float32), np.ones((1, 1), np.int64), settings
        )


def test_dict_round_trip_through_json():
    settings = GenerationSettings(**_BASE, num_beams=4, early_stopping="never", forced_bos_token_id=7)
    assert GenerationSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ValueError, match="unknown generation setting"):
        GenerationSettings.from_dict({**settings.to_dict(), "top_k": 5})
    with pytest.raises(ValueError, match="num_beams"):
        GenerationSettings.from_dict({**settings.to_dict(), "num_beams": 0})


def test_overrides_are_the_one_way_to_change_settings():
    settings = GenerationSettings(**{**_BASE, "prompt_ids": (5, 6)})
    assert settings.with_overrides(Overrides()) is settings
    assert settings.with_overrides(Overrides(max_new_tokens=3)).max_length == 5
    assert settings.with_overrides(Overrides(max_new_tokens=3)).max_new_tokens == 3
    changed = settings.with_overrides(Overrides(num_beams=4, min_new_tokens=2))
    assert (changed.num_beams, changed.min_length, settings.num_beams) == (4, 4, 1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        settings.with_overrides(Overrides(max_new_tokens=0))
    with pytest.raises(ValueError, match="num_beams"):
        settings.with_overrides(Overrides(num_beams=0))
    with pytest.raises(ValueError, match="num_beams"):
        settings.with_overrides(Overrides(num_beams=True))


def test_from_hf_reads_the_config_and_rejects_unsupported():
    from transformers import GenerationConfig

    config = GenerationConfig(
        num_beams=5, max_length=200, early_stopping=True, length_penalty=0.8, eos_token_id=2,
        pad_token_id=1, forced_eos_token_id=2, no_repeat_ngram_size=3, min_length=2,
    )  # fmt: skip
    settings = GenerationSettings.from_hf(config, prompt_ids=[2], max_length=64, forced_bos_token_id=9)
    assert settings == GenerationSettings(
        prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=64, min_length=2, num_beams=5,
        length_penalty=0.8, early_stopping=True, forced_bos_token_id=9, forced_eos_token_id=2,
        no_repeat_ngram_size=3,
    )  # fmt: skip
    assert GenerationSettings.from_hf(config, prompt_ids=(2,), max_new_tokens=5).max_length == 6
    assert GenerationSettings.from_hf(config, prompt_ids=(2,), eos_token_id=7).eos_token_ids == (7,)
    assert GenerationSettings.from_hf(config, prompt_ids=(2,), use_cache=False, top_k=3).num_beams == 5
    with pytest.raises(ValueError, match="unsupported generation setting.*typo_beams"):
        GenerationSettings.from_hf(config, prompt_ids=(2,), typo_beams=3)
    assert (
        GenerationSettings.from_hf(GenerationConfig(eos_token_id=[4, 5]), prompt_ids=(0,)).pad_token_id == 4
    )
    for bad in (
        dict(do_sample=True),
        dict(num_beam_groups=2, diversity_penalty=0.5),
        dict(bad_words_ids=[[7]]),
        dict(num_return_sequences=2),
        dict(suppress_tokens=[4]),
        dict(min_new_tokens=3),
        dict(penalty_alpha=0.6, top_k=4),
    ):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"unsupported generation setting {name}"):
            GenerationSettings.from_hf(config, prompt_ids=(2,), **bad)
        with pytest.raises(ValueError, match=f"unsupported generation setting {name}"):
            GenerationSettings.from_hf(GenerationConfig(**{**config.to_dict(), **bad}), prompt_ids=(2,))


def test_decoding_modules_do_not_import_torch():
    import subprocess
    import sys

    heavy = ("torch", "transformers", "tritonclient", "triton_python_backend_utils")
    code = f"import sys, captioning.decoding.generate, captioning.decoding.beam_search; print([m for m in {heavy} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
