"""The fp32 islands of the half-precision modes (captioning/modules/precision.py): LayerNorm weights and
arithmetic, the attention softmax and the ranked scores stay fp32 in a bf16 module, and fp32 is untouched."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from captioning.modules.precision import (  # noqa: E402
    BlipVisionAttention,
    Fp32LayerNorm,
    keep_fp32_islands,
    narrowed,
    widened,
)
from captioning.modules.steps import grouped_cross_attention, self_attention  # noqa: E402


def _norm(dim: int = 16) -> nn.LayerNorm:
    norm = nn.LayerNorm(dim)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 3.0, dim) + 1e-3)  # values bf16 would round
        norm.bias.copy_(torch.linspace(-1.0, 1.0, dim) / 3)
    return norm


def test_layer_norm_keeps_fp32_weights_under_any_cast_and_computes_in_fp32():
    original = _norm()
    island = Fp32LayerNorm(original)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to("cpu", torch.bfloat16)):
        cast(island)
        assert island.weight.dtype == island.bias.dtype == torch.float32
        assert torch.equal(island.weight, original.weight)  # never rounded on the way
    x = torch.randn(3, 5, 16).bfloat16() * 20
    out = island(x)
    assert out.dtype == torch.bfloat16
    want = nn.functional.layer_norm(x.float(), (16,), original.weight, original.bias, original.eps)
    assert torch.equal(out, want.bfloat16())
    x32 = torch.randn(3, 16)
    assert torch.equal(island(x32), original(x32))  # the same LayerNorm in fp32


def test_fp32_passes_through_the_attention_islands_untouched():
    """No extra operation in fp32: the exact mode and the traced ONNX graphs are what they were."""
    scores = torch.randn(2, 3)
    assert widened(scores) is scores and narrowed(scores, torch.float32) is scores
    half = scores.bfloat16()
    assert (
        widened(half).dtype == torch.float32
        and narrowed(widened(half), torch.bfloat16).dtype == torch.bfloat16
    )


def test_bf16_self_attention_scores_and_softmax_run_in_fp32():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1, 8, generator=gen).bfloat16() * 4 for _ in range(3))
    past_k, past_v = (torch.randn(2, 4, 5, 8, generator=gen).bfloat16() * 4 for _ in range(2))
    keep = torch.ones(2, 1, 6, dtype=torch.bool)
    context, _, _ = self_attention(q, k, v, past_k, past_v, keep, 8, multiply=True)
    keys, values = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * 8**-0.5
    want = torch.matmul(torch.softmax(scores, dim=-1).bfloat16(), values)
    assert context.dtype == torch.bfloat16 and torch.equal(context, want)


def test_bf16_cross_attention_adds_the_mask_in_fp32():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(6, 4, 1, 8, generator=gen).bfloat16()
    k = torch.randn(2, 4, 7, 8, generator=gen).bfloat16()
    v_t = torch.randn(2, 4, 8, 7, generator=gen).bfloat16()
    keep = torch.ones(2, 7)
    keep[1, 4:] = 0
    mask_add = ((1.0 - keep[:, None, None, :]) * torch.finfo(torch.bfloat16).min).bfloat16()
    out = grouped_cross_attention(q, k, v_t, mask_add, 8, multiply=True)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    reference = grouped_cross_attention(q.float(), k.float(), v_t.float(), mask_add.float(), 8, True)
    assert (out.float() - reference).abs().max() < 0.05


def _blip(fixture_checkpoints):
    from captioning.runtime.torch_runner import load_checkpoint

    return load_checkpoint("blip", fixture_checkpoints.blip)


def test_the_vision_attention_replacement_is_the_same_arithmetic_in_fp32(fixture_checkpoints):
    from captioning.modules.graphs import BlipVisionGraph

    graph = BlipVisionGraph(_blip(fixture_checkpoints)).eval()
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = graph(pixels)
        for layer in graph.vision.encoder.layers:
            layer.self_attn = BlipVisionAttention(layer.self_attn)
        assert torch.equal(graph(pixels), want)


def test_a_bf16_runner_keeps_its_islands_in_fp32(fixture_checkpoints):
    from transformers.models.blip.modeling_blip import BlipAttention

    from captioning.runtime.torch_runner import TorchOptions, step_decoder, vision_graph

    blip = _blip(fixture_checkpoints)
    options = TorchOptions(precision="bf16")
    vision = vision_graph(blip, options)
    decoder = step_decoder("blip", blip, options, max_length=8)
    for module in (vision.module, decoder.step, decoder.cross):
        kinds = {type(m) for m in module.modules()}
        assert nn.LayerNorm not in kinds and BlipAttention not in kinds
    norms = [m for m in (*vision.module.modules(), *decoder.step.modules()) if isinstance(m, Fp32LayerNorm)]
    assert len(norms) == 13  # every LayerNorm of the fixture BLIP: vision 5, text decoder 8
    assert all(p.dtype == torch.float32 for n in norms for p in n.parameters())
    linears = [m for m in decoder.step.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert decoder.step.logits.weight.dtype == torch.bfloat16  # the output product runs in bf16

    # The search ranks fp32 scores: logits come back fp32 and log-softmax runs on them.
    states = np.random.default_rng(0).standard_normal((1, 37, blip.config.text_config.encoder_hidden_size))
    session = decoder.start(states.astype(np.float32), np.ones((1, 37), dtype=np.int64), num_beams=1)
    logits = session.step(np.array([[blip.config.text_config.bos_token_id]]))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_islands_are_swapped_once_and_shared_modules_stay_shared():
    norm = nn.LayerNorm(4)
    model = nn.ModuleDict({"a": nn.Sequential(norm, nn.Linear(4, 4)), "b": nn.Sequential(norm)})
    assert keep_fp32_islands(model) == {"Fp32LayerNorm": 1}
    assert model["a"][0] is model["b"][0] and isinstance(model["a"][0], Fp32LayerNorm)
    assert keep_fp32_islands(model) == {}  # already swapped
