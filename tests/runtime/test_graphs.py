"""StepSession's cache reorder (in place for moved rows only) against a plain gather, on every kind of step
beam search produces: identity, a permutation, duplicated parents, shrinking to one row per source and back."""

import numpy as np
import pytest

from captioning.runtime.graphs import StepDecoder

LAYERS, HEADS, DIM, SOURCES, BEAMS = 2, 3, 4, 2, 3


class _EchoStep:
    """A step graph whose presents are the pasts grown by one position holding each row's new token id, so
    every cache row carries its own history and a wrong reorder is visible."""

    input_names = ("input_ids", "encoder_attention_mask", "cross.0.key") + tuple(
        f"past_key_values.{i}" for i in range(2 * LAYERS)
    )
    output_names = ("logits",) + tuple(f"present.{i}" for i in range(2 * LAYERS))

    def run(self, feeds):
        ids = feeds["input_ids"][:, -1:].astype(np.float32)
        out = {"logits": np.zeros((ids.shape[0], 5), dtype=np.float32)}
        for i in range(2 * LAYERS):
            past = feeds[f"past_key_values.{i}"]
            new = np.broadcast_to(ids[:, None, :, None] + i, (ids.shape[0], HEADS, 1, DIM))
            out[f"present.{i}"] = np.concatenate([past, new], axis=2)
        return out


class _Cross:
    input_names = ("encoder_hidden_states",)
    output_names = ("cross.0.key",)

    def run(self, feeds):
        return {"cross.0.key": np.zeros((SOURCES, HEADS, 6, DIM), dtype=np.float32)}


def _session():
    states = np.zeros((SOURCES, 6, 8), dtype=np.float32)
    return StepDecoder(_Cross(), _EchoStep()).start(states, np.ones((SOURCES, 6), dtype=np.int64), BEAMS)


@pytest.mark.parametrize(
    "rows",
    [[0, 1, 2, 3, 4, 5], [2, 0, 1, 5, 4, 3], [0, 0, 1, 3, 3, 3], [1, 1, 1, 4, 4, 4], [2, 1, 0, 3, 3, 4]],
)
def test_reorder_equals_a_gather_of_the_cache(rows):
    session = _session()
    count = SOURCES * BEAMS
    for step in range(3):  # a few positions of distinct per-row history
        session.step(np.arange(count)[:, None] * 10 + step)
    expected = [np.take(p, rows, axis=0) for p in session.past]
    session.reorder(np.asarray(rows))
    for got, want in zip(session.past, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    session.reorder(np.asarray(rows))  # twice: in-place writes must not leak into the next reorder
    for got, want in zip(session.past, expected, strict=True):
        np.testing.assert_array_equal(got, np.take(want, rows, axis=0))


def test_reorder_shrinks_to_one_row_per_source_and_grows_back():
    session = _session()
    session.reorder(np.arange(SOURCES) * BEAMS)  # the shared first steps: one row per source
    session.step(np.array([[7], [8]]))
    assert session.past[0].shape[0] == SOURCES
    session.reorder(np.repeat(np.arange(SOURCES), BEAMS))
    assert all(p.shape[0] == SOURCES * BEAMS for p in session.past)
    np.testing.assert_array_equal(session.past[0][:, 0, -1, 0], [7, 7, 7, 8, 8, 8])


def test_reorder_gathers_read_only_caches():
    session = _session()
    session.step(np.arange(SOURCES * BEAMS)[:, None])
    for p in session.past:
        p.flags.writeable = False  # e.g. a runner that hands out views of buffers it keeps
    before = [p.copy() for p in session.past]
    session.reorder(np.array([1, 1, 0, 3, 5, 4]))
    np.testing.assert_array_equal(session.past[0], np.take(before[0], [1, 1, 0, 3, 5, 4], axis=0))
