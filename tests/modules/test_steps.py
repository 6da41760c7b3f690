"""The step graphs' cross-attention arithmetic against the textbook form transformers computes per beam."""

import math

import pytest

torch = pytest.importorskip("torch")

from captioning.modules.steps import _values_t, grouped_cross_attention  # noqa: E402

SOURCES, BEAMS, HEADS, SOURCE_LEN, DIM = 2, 3, 4, 7, 8


def _reference(q, k, v, mask_add, multiply):
    """Every beam row gets its own copy of its source's keys/values, as `generate()` caches them."""
    k = k.repeat_interleave(BEAMS, dim=0)
    v = v.repeat_interleave(BEAMS, dim=0)
    raw = q @ k.transpose(-1, -2)
    scores = raw * DIM**-0.5 if multiply else raw / math.sqrt(DIM)
    if mask_add is not None:
        scores = scores + mask_add.repeat_interleave(BEAMS, dim=0)
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("new_len", [1, 3])
@pytest.mark.parametrize("multiply", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_cross_attention_matches_per_beam_attention(new_len, multiply, masked):
    gen = torch.Generator().manual_seed(new_len * 10 + multiply * 2 + masked)
    q = torch.randn(SOURCES * BEAMS, HEADS, new_len, DIM, generator=gen)
    states_k = torch.randn(SOURCES, SOURCE_LEN, HEADS * DIM, generator=gen)
    states_v = torch.randn(SOURCES, SOURCE_LEN, HEADS * DIM, generator=gen)
    k = states_k.reshape(SOURCES, SOURCE_LEN, HEADS, DIM).transpose(1, 2)
    v = states_v.reshape(SOURCES, SOURCE_LEN, HEADS, DIM).transpose(1, 2)
    mask_add = None
    if masked:  # the second source is padded after 4 tokens
        keep = torch.ones(SOURCES, SOURCE_LEN)
        keep[1, 4:] = 0
        mask_add = (1.0 - keep[:, None, None, :]) * torch.finfo(torch.float32).min

    v_t = _values_t(states_v, HEADS)
    assert v_t.shape == (SOURCES, HEADS, DIM, SOURCE_LEN)
    got = grouped_cross_attention(q, k, v_t, mask_add, DIM, multiply)
    want = _reference(q, k, v, mask_add, multiply)
    assert got.shape == (SOURCES * BEAMS, HEADS, new_len, DIM)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
