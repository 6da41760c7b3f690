"""Export jobs for the cross-KV and decoder-step graphs of either architecture, validated against transformers.

The step graph is checked against the model's own forward pass on beam-expanded encoder states (what
`generate()` runs), fed with keys/values from the cross-KV module, so the pair is validated as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cache import cache_from_flat, feeds_to_torch
from .specs import cross_kv_spec, cross_names, decoder_spec, past_names
from .validate import ExportJob, ValidationCase

# (batch, beams, new tokens, past length, encoder length); the last one traces the graph.
CASES = ((1, 1, 1, 0, 7), (1, 3, 1, 4, 5), (2, 3, 1, 5, 6), (3, 1, 2, 0, 4), (2, 2, 3, 4, 5))
TRACE = (2, 2, 2, 3, 5)

# HF forward on row-expanded inputs: (input_ids, encoder states, encoder mask, cache or None) -> outputs
Reference = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], object]


@dataclass(frozen=True)
class DecoderDims:
    num_layers: int
    num_heads: int
    head_dim: int
    hidden: int
    vocab: int
    fixed_encoder_len: int | None = None  # BLIP: the number of image tokens
    pad_encoder: bool = False


def _feeds(rng, dims: DecoderDims, cross: nn.Module, batch, beams, new_len, past_len, encoder_len):
    encoder_len = dims.fixed_encoder_len or encoder_len
    rows = batch * beams
    mask = np.ones((batch, encoder_len), dtype=np.int64)
    if dims.pad_encoder:
        for row in range(1, batch):
            mask[row, max(1, encoder_len - row) :] = 0
    states = rng.standard_normal((batch, encoder_len, dims.hidden), dtype=np.float32)
    with torch.no_grad():
        cross_kv = [t.numpy() for t in cross(torch.from_numpy(states))]
    feeds = {
        "input_ids": rng.integers(0, dims.vocab, size=(rows, new_len), dtype=np.int64),
        "encoder_attention_mask": mask,
    }
    feeds.update(zip(cross_names(dims.num_layers), cross_kv, strict=True))
    shape = (rows, dims.num_heads, past_len, dims.head_dim)
    for name in past_names(dims.num_layers):
        feeds[name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds, states


def _reference(reference: Reference, feeds, states, beams: int, dims: DecoderDims):
    def run() -> dict[str, np.ndarray]:
        t = feeds_to_torch(feeds)
        past = [t[name] for name in past_names(dims.num_layers)]
        cache = cache_from_flat(past) if past[0].shape[2] > 0 else None
        states_rows = torch.from_numpy(states).repeat_interleave(beams, dim=0)
        mask_rows = t["encoder_attention_mask"].repeat_interleave(beams, dim=0)
        with torch.no_grad():
            out = reference(t["input_ids"], states_rows, mask_rows, cache)
        result = {"logits": out.logits[:, -1, :].numpy()}
        for i, layer in enumerate(out.past_key_values.self_attention_cache.layers):
            result[f"present.{i}.key"] = layer.keys.numpy()
            result[f"present.{i}.value"] = layer.values.numpy()
        return result

    return run


def decoder_jobs(
    names: tuple[str, str],
    cross: nn.Module,
    step: nn.Module,
    reference: Reference,
    dims: DecoderDims,
    seed: int = 0,
) -> list[ExportJob]:
    """[cross-KV job, step job] for one architecture."""
    cross_name, step_name = names
    rng = np.random.default_rng(seed)
    cross, step = cross.eval(), step.eval()

    step_cases = []
    for batch, beams, new_len, past_len, encoder_len in CASES:
        feeds, states = _feeds(rng, dims, cross, batch, beams, new_len, past_len, encoder_len)
        label = f"batch={batch},beams={beams},new={new_len},past={past_len},encoder={feeds['encoder_attention_mask'].shape[1]}"
        step_cases.append(ValidationCase(label, feeds, _reference(reference, feeds, states, beams, dims)))
    step_spec = decoder_spec(step_name, dims.num_layers)
    trace, _ = _feeds(rng, dims, cross, *TRACE)
    trace_t = feeds_to_torch(trace)
    step_job = ExportJob(step_spec, step, tuple(trace_t[n] for n in step_spec.input_names), step_cases)

    def cross_case(batch: int, encoder_len: int) -> ValidationCase:
        encoder_len = dims.fixed_encoder_len or encoder_len
        states = rng.standard_normal((batch, encoder_len, dims.hidden), dtype=np.float32)

        def run() -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = cross(torch.from_numpy(states))
            return {name: t.numpy() for name, t in zip(cross_names(dims.num_layers), out, strict=True)}

        return ValidationCase(f"batch={batch},encoder={encoder_len}", {"encoder_hidden_states": states}, run)

    encoder_len = dims.fixed_encoder_len or 5
    example = (torch.from_numpy(rng.standard_normal((2, encoder_len, dims.hidden), dtype=np.float32)),)
    cross_job = ExportJob(
        cross_kv_spec(cross_name, dims.num_layers), cross, example, [cross_case(1, 3), cross_case(3, 6)]
    )
    return [cross_job, step_job]
