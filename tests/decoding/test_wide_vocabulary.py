"""Beam search's scoring from raw logits (`tokens.beam_candidates`), the path every host step takes on a real
vocabulary: equal to the full processed rows on adversarial logits, and to HF `generate()` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import MB_LANG, blip_case, mbart_case, tiny_blip, tiny_mbart

import captioning.decoding.beam_search as beam_search
from captioning.decoding import GenerationSettings
from captioning.decoding.tokens import beam_candidates, beam_log_probs, topk_indices

WIDE_BLIP, WIDE_MBART = 6000, 8000  # wide enough (> 256 x candidates) for the shortcut to apply


@pytest.fixture
def shortcut_steps(monkeypatch):
    """How many steps took the shortcut (and how many the full rows): a test that never takes it proves
    nothing about it."""
    counts = {"shortcut": 0, "full": 0}

    def counted(*args):
        top = beam_candidates(*args)
        counts["shortcut" if top is not None else "full"] += 1
        return top

    monkeypatch.setattr(beam_search, "beam_candidates", counted)
    return counts


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_beams=3),
        dict(num_beams=5, length_penalty=2.0, early_stopping=True),
        dict(num_beams=4, length_penalty=-1.0, early_stopping="never"),
        dict(num_beams=3, min_length=12),
    ],
)
def test_blip_on_a_wide_vocabulary_matches_hf(shortcut_steps, kwargs):
    model = tiny_blip(WIDE_BLIP)
    for seed in (1, 2):
        blip_case(model, batch=5, seed=seed, max_length=20, **kwargs)
    assert shortcut_steps["shortcut"] > 10


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_beams=5, max_length=24),
        dict(num_beams=3, max_length=20, min_length=10, length_penalty=0.5),
        dict(num_beams=4, max_length=64, early_stopping=True),
    ],
)
def test_mbart_on_a_wide_vocabulary_matches_hf(shortcut_steps, kwargs):
    model = tiny_mbart(WIDE_MBART, eos_bias=1.5)
    for seed in (3, 4):
        mbart_case(model, batch=5, seed=seed, forced_bos_token_id=MB_LANG, **kwargs)
    assert shortcut_steps["shortcut"] > 10 and shortcut_steps["full"] > 0  # the forced steps go the long way


SETTINGS = GenerationSettings(
    prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=40, min_length=10, num_beams=5
)


def _full(settings, cur_len, logits, running, keep, shared):
    batch, beams = running.shape
    log_probs = beam_log_probs(settings, np.ones((len(logits), cur_len), np.int64), logits)
    if shared:
        log_probs = np.repeat(log_probs, beams, axis=0)
    scores = (log_probs.reshape(batch, beams, -1) + running[:, :, None]).reshape(batch, -1)
    top = topk_indices(scores, keep)
    return np.take_along_axis(scores, top, axis=1), top


def _case(rng, trial):
    batch, beams, vocab = int(rng.integers(1, 9)), 5, int(rng.choice([6000, 30524, 50265]))
    shared = trial % 5 == 0
    logits = rng.standard_normal((batch if shared else batch * beams, vocab), dtype=np.float32)
    logits *= np.float32(rng.uniform(0.5, 12))
    if trial % 3 == 0:  # coarse logits: many exact ties, inside a beam and across beams
        logits = np.round(logits * 2) / 2
    running = (rng.standard_normal((batch, beams)) * 6 - 12).astype(np.float32)
    if shared:  # the first steps: one live beam, the others at HF's -1e9
        running[:, 0], running[:, 1:] = 0.0, -1e9
    if trial % 4 == 1:  # equal beam scores
        running[:] = running[:, :1]
    if trial % 7 == 2:  # a beam out of the running
        running[:, -1] = -np.inf
    return logits, running, shared, int(rng.choice([3, 12]))  # below and past min_length


def test_shortcut_equals_the_full_rows_on_adversarial_logits():
    rng = np.random.default_rng(0)
    for trial in range(60):
        logits, running, shared, cur_len = _case(rng, trial)
        expected = _full(SETTINGS, cur_len, logits, running, 10, shared)
        got = beam_candidates(SETTINGS, cur_len, logits, running, 10, shared)
        assert got is not None, trial
        np.testing.assert_array_equal(got[1], expected[1], err_msg=f"trial {trial}")
        np.testing.assert_array_equal(got[0], expected[0], err_msg=f"trial {trial}")


def test_rounding_ties_across_the_bound_are_kept():
    """Logits one float32 step apart whose scores round to one value once a large beam score is added:
    the full rows order them by token id, so the shortcut must see all of them."""
    vocab, beams = 8192, 2
    logits = np.full((beams, vocab), -20.0, np.float32)
    base = np.float32(3.0)
    steps = base + np.arange(40, dtype=np.float32) * np.spacing(base)
    logits[0, 4000:4040] = steps[::-1]  # the higher logits sit at the higher ids
    logits[1, 100:140] = steps
    running = np.array([[-300.0, -300.0]], np.float32)
    expected = _full(SETTINGS, 12, logits, running, 4, False)
    got = beam_candidates(SETTINGS, 12, logits, running, 4, False)
    assert len(set(expected[0][0].tolist())) == 1  # the kept scores do tie
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(
    "change",
    [
        dict(repetition_penalty=1.2),
        dict(no_repeat_ngram_size=2),
        dict(forced_bos_token_id=7),  # cur_len 1 below: a forced step
    ],
)
def test_processors_needing_whole_rows_take_the_full_path(change):
    settings = GenerationSettings(
        prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=40, num_beams=5, **change
    )
    logits = np.random.default_rng(1).standard_normal((5, 6000), dtype=np.float32)
    assert beam_candidates(settings, 1, logits, np.zeros((1, 5), np.float32), 10, False) is None


def test_small_or_broken_rows_take_the_full_path():
    running = np.zeros((1, 5), np.float32)
    small = np.random.default_rng(2).standard_normal((5, 2000), dtype=np.float32)
    assert beam_candidates(SETTINGS, 12, small, running, 10, False) is None
    broken = np.random.default_rng(3).standard_normal((5, 6000), dtype=np.float32)
    broken[2, 17] = np.nan
    assert beam_candidates(SETTINGS, 12, broken, running, 10, False) is None
