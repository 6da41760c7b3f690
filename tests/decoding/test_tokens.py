"""The beam-search numerics helpers against plain reference definitions."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.decoding.tokens import log_softmax, topk_indices


def _reference_topk(x: np.ndarray, k: int) -> np.ndarray:
    # full stable sort: descending value, ties to the lower index
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in x])


def _rows(rng: np.random.Generator, case: int, rows: int, width: int) -> np.ndarray:
    if case % 2:
        x = rng.integers(-5, 5, size=(rows, width)).astype(np.float32)  # many exact ties
    else:
        x = rng.standard_normal((rows, width)).astype(np.float32)
    if case % 3 == 0:  # beams with very different running scores, laid side by side as in beam search
        x += np.repeat(rng.standard_normal(5) * 5, -(-width // 5))[:width].astype(np.float32)
    if case % 5 == 0:  # processors mask a large part of the vocabulary
        x[:, : width // 2] = -np.inf
    if case % 7 == 0:  # forced token: one finite value per row
        x[:] = -np.inf
        x[:, rng.integers(0, width)] = 0.0
    return x


@pytest.mark.parametrize("seed", range(4))
def test_topk_indices_matches_a_full_sort(seed):
    rng = np.random.default_rng(seed)
    for case in range(60):
        width = int(rng.integers(1, 40_000))
        k = min(int(rng.integers(1, 12)), width)
        x = _rows(rng, case, int(rng.integers(1, 5)), width)
        np.testing.assert_array_equal(topk_indices(x, k), _reference_topk(x, k), err_msg=f"case {case}")


def test_log_softmax_normalises_in_float32():
    x = (np.random.default_rng(0).standard_normal((3, 50_000)) * 4).astype(np.float32)
    out = log_softmax(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.exp(out.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(np.argmax(out, axis=1), np.argmax(x, axis=1))


@pytest.mark.parametrize("seed", range(20))
def test_top_candidates_select_what_a_full_top_k_selects(seed):
    from captioning.decoding.tokens import top_candidates, topk_indices

    rng = np.random.default_rng(seed)
    batch, beams, vocab = 3, 4, 50
    keep = 2 * beams
    log_probs = rng.standard_normal((batch * beams, vocab)).astype(np.float32).round(1)  # rounding makes ties
    running = rng.standard_normal((batch, beams)).astype(np.float32).round(1)
    full = (log_probs.reshape(batch, beams, vocab) + running[:, :, None]).reshape(batch, -1)
    expected = topk_indices(full, keep)
    ids = np.stack([topk_indices(row[None], keep)[0] for row in log_probs])  # each row's own top `keep`
    values = np.take_along_axis(log_probs, ids, axis=1)
    scores, flat = top_candidates(values, ids, running, vocab, keep)
    np.testing.assert_array_equal(flat, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(full, expected, axis=1))


def test_device_scoring_covers_only_what_a_device_can_apply():
    from captioning.decoding import GenerationSettings
    from captioning.decoding.tokens import DeviceScoring, device_scoring

    base = GenerationSettings(prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=10, min_length=4,
                              forced_bos_token_id=7, forced_eos_token_id=2)  # fmt: skip
    assert device_scoring(base, 1) == DeviceScoring(banned=(2,), forced=7)
    assert device_scoring(base, 5) == DeviceScoring()
    assert device_scoring(base, 9) == DeviceScoring(forced=2)
    import dataclasses

    assert device_scoring(dataclasses.replace(base, repetition_penalty=1.2), 5) is None
    assert device_scoring(dataclasses.replace(base, no_repeat_ngram_size=3), 5) is None
