"""Decoder step graphs with cross-attention keys/values computed once per source, shared by its beams.

`generate()` expands the encoder states to every beam and caches cross-attention keys/values per beam row.
For BLIP-base that is 12 layers x 577 image tokens x 768 x 2 per row: recomputing it every step (or copying
it per beam) would cost more than the rest of decoding. Here a `*_cross_kv` graph projects each source once
(keys [B,H,S,Dh], values [B,H,Dh,S]) and the step graph attends to it from all beams of that source by
folding the beams into the query axis, so nothing is repeated. Every projection, norm and feed-forward is the
checkpoint's own module; only the attention arithmetic is written out, in transformers' eager operation order
except for the cross-attention operand order below.
Rows of the step graph are grouped source-major (N = B x beams), which beam reordering preserves.

The cross-attention products put the source's keys/values on the unpacked side of the matrix product (scores
computed transposed, values stored transposed once per source): a GEMM packs its right-hand operand, and
packing 577 image keys per head every step cost more than multiplying them by a few beam rows (BLIP-base,
one thread: 2.3 ms instead of 3.2 ms per layer for 3 images; docs/performance.md, run 11).

*Merged steps* (`forward_merged`, the torch runner's in-flight batching): the rows of several searches of
different ages, each with its own sources, caches and past length (a `Segment`), go through every projection,
norm, feed-forward and the output layer as one batch, so the weights are read once per step for all of them;
only the attention runs per segment, over that segment's own cache and sources, as its own step would run it.
With one segment the operations are exactly those of `forward`, which is what the export traces.

In bf16/fp16 (the torch runner's fast modes) the attention scores, their scaling, mask and softmax are computed
in fp32 (`captioning.modules.precision`); in fp32 those branches are not taken, so the traced graphs are the same.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from captioning.modules.precision import narrowed, widened
from captioning.modules.tensors import CacheSlot, causal_keep, linear_2d, new_positions


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[R, L, H*Dh] -> [R, H, L, Dh]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[R, H, L, Dh] -> [R, L, H*Dh]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _scale(raw: torch.Tensor, head_dim: int, multiply: bool) -> torch.Tensor:
    # BLIP divides by sqrt(Dh); mBART multiplies by Dh**-0.5 (different rounding, so follow each).
    return raw * (head_dim**-0.5) if multiply else raw / math.sqrt(head_dim)


def self_attention(q, k, v, past_k, past_v, keep, head_dim, multiply):
    """Causal self-attention over cache + new keys; returns context [N,H,T,Dh] and the grown cache.

    The past is a tensor (the exported graphs: concatenated, returned as `present`) or a `CacheSlot` (the torch
    runner: written in place, the same keys in the same order)."""
    if isinstance(past_k, CacheSlot):
        k, v = past_k.append(k), past_v.append(v)
    else:
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
    scores = _scale(widened(torch.matmul(q, k.transpose(-1, -2))), head_dim, multiply)
    scores = scores.masked_fill(~keep.unsqueeze(1), torch.finfo(scores.dtype).min)
    return torch.matmul(narrowed(torch.softmax(scores, dim=-1), v.dtype), v), k, v


def grouped_cross_attention(q, k, v_t, mask_add, head_dim, multiply):
    """q [N,H,T,Dh] with N = B*beams; k [B,H,S,Dh]; v_t [B,H,Dh,S]; mask_add None or [B,1,1,S] -> [N,H,T,Dh].

    Both products keep the source on the left (k @ q^T, v^T @ p^T); the small [S, Q] score and probability
    tensors are the ones transposed. Same dot products as q @ k^T and p @ v, summed in another order."""
    rows, heads, new_len, dim = q.shape
    batch = k.shape[0]
    grouped = q.reshape(batch, -1, heads, new_len, dim).transpose(1, 2).reshape(batch, heads, -1, dim)
    scores = _scale(widened(torch.matmul(k, grouped.transpose(-1, -2))).transpose(-1, -2), head_dim, multiply)
    if mask_add is not None:
        scores = scores + mask_add
    probs = narrowed(torch.softmax(scores, dim=-1), v_t.dtype)
    context = torch.matmul(v_t, probs.transpose(-1, -2)).transpose(-1, -2)
    return context.reshape(batch, heads, -1, new_len, dim).transpose(1, 2).reshape(rows, heads, new_len, dim)


def _values_t(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[R, S, H*Dh] -> [R, H, Dh, S]: cross-attention values stored transposed (see the module docstring)."""
    return _heads(x, heads).transpose(-1, -2)


def _pairs(flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


@dataclasses.dataclass
class Segment:
    """One search's rows in a (merged) step: its encoder mask [B,S], per layer its cross (k, v_t) and its past
    (k, v) (tensors or `CacheSlot`s); its rows are its past's rows."""

    encoder_attention_mask: torch.Tensor
    cross: list[tuple[torch.Tensor, torch.Tensor]]
    past: list[tuple]

    @classmethod
    def of(cls, encoder_attention_mask: torch.Tensor, flat: tuple, layers: int) -> Segment:
        return cls(encoder_attention_mask, _pairs(flat[: 2 * layers]), _pairs(flat[2 * layers :]))

    @property
    def rows(self) -> int:
        return self.past[0][0].shape[0]


class OutputLayer(nn.Module):
    """The vocabulary projection `x @ weight.T + bias` (the checkpoint's own, tied, weight) as a module of its
    own, so that a runner can swap in a faster product (`captioning.runtime.packing`); traced as one Gemm."""

    def __init__(self, weight: nn.Parameter, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        if isinstance(bias, nn.Parameter) or bias is None:
            self.bias = bias
        else:  # mBART's final_logits_bias, a buffer [1, V]: moved with the module to a device or a dtype
            self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_2d(x, self.weight, None if self.bias is None else self.bias.reshape(-1))


def _split(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    return (x,) if len(sizes) == 1 else torch.split(x, sizes, dim=0)


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _positions(input_ids: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
    """The new tokens' positions: [1, T] for one segment (as the export traces it), else [N, T] per row."""
    if len(segments) == 1:
        return new_positions(input_ids, segments[0].past[0][0]).unsqueeze(0)
    return torch.cat(
        [new_positions(input_ids, g.past[0][0]).unsqueeze(0).expand(g.rows, -1) for g in segments], dim=0
    )


def _keeps(input_ids: torch.Tensor, segments: list[Segment]) -> list[torch.Tensor]:
    parts = _split(input_ids, [g.rows for g in segments])
    return [causal_keep(ids, g.past[0][0]) for ids, g in zip(parts, segments, strict=True)]


def _self_attention(q, k, v, segments, layer, keeps, head_dim, multiply):
    """Each segment's rows attend to their own cache; returns the context [N,H,T,Dh] and each segment's
    present (k, v)."""
    sizes = [g.rows for g in segments]
    contexts, present = [], []
    for g, qi, ki, vi, keep in zip(
        segments, _split(q, sizes), _split(k, sizes), _split(v, sizes), keeps, strict=True
    ):
        pk, pv = g.past[layer]
        context, k_all, v_all = self_attention(qi, ki, vi, pk, pv, keep, head_dim, multiply)
        contexts.append(context)
        present.append((k_all, v_all))
    return _join(contexts), present


def _cross_attention(q, segments, layer, mask_adds, head_dim, multiply):
    """Each segment's rows attend to their own sources."""
    parts = _split(q, [g.rows for g in segments])
    return _join(
        [
            grouped_cross_attention(qi, *g.cross[layer], mask_add, head_dim, multiply)
            for qi, g, mask_add in zip(parts, segments, mask_adds, strict=True)
        ]
    )


def _flat_present(present: list[list[tuple]]) -> list[torch.Tensor]:
    """The first segment's present as the graph returns it: its k, v per layer (`present[layer][segment]`)."""
    return [t for per_segment in present for t in per_segment[0]]


class BlipCrossKV(nn.Module):
    """image_embeds [B,S,D] -> per layer cross-attention key [B,H,S,Dh] and value [B,H,Dh,S]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.layers = model.text_decoder.bert.encoder.layer
        self.heads = model.config.text_config.num_attention_heads

    def forward(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for layer in self.layers:
            attention = layer.crossattention.self
            out += [_heads(attention.key(encoder_hidden_states), self.heads)]
            out += [_values_t(attention.value(encoder_hidden_states), self.heads)]
        return tuple(out)


class BlipTextStep(nn.Module):
    """input_ids [N,T], encoder_attention_mask [B,S], cross k/v, past k/v -> last-position logits [N,V], present."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        text = model.text_decoder
        self.embeddings = text.bert.embeddings
        self.layers = text.bert.encoder.layer
        head = text.cls.predictions
        self.transform = head.transform
        self.logits = OutputLayer(head.decoder.weight, head.decoder.bias)
        self.heads = model.config.text_config.num_attention_heads
        self.head_dim = model.config.text_config.hidden_size // self.heads

    def forward(self, input_ids, encoder_attention_mask, *flat):
        segment = Segment.of(encoder_attention_mask, flat, len(self.layers))
        logits, present = self.forward_merged(input_ids, [segment])
        return (logits, *_flat_present(present))

    def forward_merged(self, input_ids, segments: list[Segment]):
        """input_ids [N,T], the segments' rows in order -> logits [N,V], per layer each segment's present."""
        positions = _positions(input_ids, segments)
        hidden = self.embeddings(input_ids=input_ids, position_ids=positions)
        keeps = _keeps(input_ids, segments)
        # transformers 4.57's BLIP cross-attention never applies encoder_attention_mask (images are not padded);
        # keep the input so both decoders share one interface, and compute exactly what transformers computes.
        for g in segments:
            hidden = hidden + 0.0 * g.encoder_attention_mask.sum().to(hidden.dtype)
        no_masks = [None] * len(segments)
        present = []
        for index, layer in enumerate(self.layers):
            attn = layer.attention.self
            q = _heads(attn.query(hidden), self.heads)
            context, kv = _self_attention(
                q,
                _heads(attn.key(hidden), self.heads),
                _heads(attn.value(hidden), self.heads),
                segments,
                index,
                keeps,
                self.head_dim,
                multiply=False,
            )
            present.append(kv)
            hidden = layer.attention.output(_merge(context), hidden)
            q = _heads(layer.crossattention.self.query(hidden), self.heads)
            context = _cross_attention(q, segments, index, no_masks, self.head_dim, multiply=False)
            hidden = layer.crossattention.output(_merge(context), hidden)
            hidden = layer.output(layer.intermediate(hidden), hidden)
        # 2-D from here on: indexing the [N, 1, V] logits afterwards copies them (25 MB a step for mBART).
        last = self.transform(hidden[:, -1, :])
        logits = self.logits(last)
        return logits, present


class MBartCrossKV(nn.Module):
    """encoder last_hidden_state [B,S,D] -> per layer cross-attention key [B,H,S,Dh] and value [B,H,Dh,S]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.layers = model.get_decoder().layers
        self.heads = model.config.decoder_attention_heads

    def forward(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for layer in self.layers:
            out += [_heads(layer.encoder_attn.k_proj(encoder_hidden_states), self.heads)]
            out += [_values_t(layer.encoder_attn.v_proj(encoder_hidden_states), self.heads)]
        return tuple(out)


class MBartStep(nn.Module):
    """The BLIP step's interface for mBART-50's decoder + lm_head + final_logits_bias (pre-LayerNorm layers)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.get_decoder()
        self.logits = OutputLayer(model.lm_head.weight, model.final_logits_bias)
        self.heads = model.config.decoder_attention_heads
        self.head_dim = model.config.d_model // self.heads

    def forward(self, input_ids, encoder_attention_mask, *flat):
        segment = Segment.of(encoder_attention_mask, flat, len(self.decoder.layers))
        logits, present = self.forward_merged(input_ids, [segment])
        return (logits, *_flat_present(present))

    def forward_merged(self, input_ids, segments: list[Segment]):
        """input_ids [N,T], the segments' rows in order -> logits [N,V], per layer each segment's present."""
        decoder = self.decoder
        positions = _positions(input_ids, segments)
        hidden = decoder.embed_tokens(input_ids) + decoder.embed_positions.weight[positions + 2]
        hidden = decoder.layernorm_embedding(hidden)
        keeps = _keeps(input_ids, segments)
        dtype = hidden.dtype
        mask_adds = [
            (1.0 - g.encoder_attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
            for g in segments
        ]
        present = []
        for index, layer in enumerate(decoder.layers):
            residual = hidden
            x = layer.self_attn_layer_norm(hidden)
            attn = layer.self_attn
            context, kv = _self_attention(
                _heads(attn.q_proj(x), self.heads),
                _heads(attn.k_proj(x), self.heads),
                _heads(attn.v_proj(x), self.heads),
                segments,
                index,
                keeps,
                self.head_dim,
                multiply=True,
            )
            present.append(kv)
            hidden = residual + attn.out_proj(_merge(context))
            residual = hidden
            x = layer.encoder_attn_layer_norm(hidden)
            q = _heads(layer.encoder_attn.q_proj(x), self.heads)
            context = _cross_attention(q, segments, index, mask_adds, self.head_dim, multiply=True)
            hidden = residual + layer.encoder_attn.out_proj(_merge(context))
            residual = hidden
            x = layer.final_layer_norm(hidden)
            hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
        last = decoder.layer_norm(hidden[:, -1, :])
        logits = self.logits(last)
        return logits, present
