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
"""

from __future__ import annotations

import math

import torch
from torch import nn

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
    scores = _scale(torch.matmul(q, k.transpose(-1, -2)), head_dim, multiply)
    scores = scores.masked_fill(~keep.unsqueeze(1), torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), v), k, v


def grouped_cross_attention(q, k, v_t, mask_add, head_dim, multiply):
    """q [N,H,T,Dh] with N = B*beams; k [B,H,S,Dh]; v_t [B,H,Dh,S]; mask_add None or [B,1,1,S] -> [N,H,T,Dh].

    Both products keep the source on the left (k @ q^T, v^T @ p^T); the small [S, Q] score and probability
    tensors are the ones transposed. Same dot products as q @ k^T and p @ v, summed in another order."""
    rows, heads, new_len, dim = q.shape
    batch = k.shape[0]
    grouped = q.reshape(batch, -1, heads, new_len, dim).transpose(1, 2).reshape(batch, heads, -1, dim)
    scores = _scale(torch.matmul(k, grouped.transpose(-1, -2)).transpose(-1, -2), head_dim, multiply)
    if mask_add is not None:
        scores = scores + mask_add
    probs = torch.softmax(scores, dim=-1)
    context = torch.matmul(v_t, probs.transpose(-1, -2)).transpose(-1, -2)
    return context.reshape(batch, heads, -1, new_len, dim).transpose(1, 2).reshape(rows, heads, new_len, dim)


def _values_t(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[R, S, H*Dh] -> [R, H, Dh, S]: cross-attention values stored transposed (see the module docstring)."""
    return _heads(x, heads).transpose(-1, -2)


def _pairs(flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


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
        self.head = text.cls.predictions
        self.heads = model.config.text_config.num_attention_heads
        self.head_dim = model.config.text_config.hidden_size // self.heads

    def forward(self, input_ids, encoder_attention_mask, *flat):
        count = len(self.layers)
        cross, past = _pairs(flat[: 2 * count]), _pairs(flat[2 * count :])
        positions = new_positions(input_ids, past[0][0]).unsqueeze(0)
        hidden = self.embeddings(input_ids=input_ids, position_ids=positions)
        keep = causal_keep(input_ids, past[0][0])
        # transformers 4.57's BLIP cross-attention never applies encoder_attention_mask (images are not padded);
        # keep the input so both decoders share one interface, and compute exactly what transformers computes.
        hidden = hidden + 0.0 * encoder_attention_mask.sum().to(hidden.dtype)
        present = []
        for layer, (ck, cv), (pk, pv) in zip(self.layers, cross, past, strict=True):
            attn = layer.attention.self
            q = _heads(attn.query(hidden), self.heads)
            context, k, v = self_attention(
                q,
                _heads(attn.key(hidden), self.heads),
                _heads(attn.value(hidden), self.heads),
                pk,
                pv,
                keep,
                self.head_dim,
                multiply=False,
            )
            present += [k, v]
            hidden = layer.attention.output(_merge(context), hidden)
            q = _heads(layer.crossattention.self.query(hidden), self.heads)
            context = grouped_cross_attention(q, ck, cv, None, self.head_dim, multiply=False)
            hidden = layer.crossattention.output(_merge(context), hidden)
            hidden = layer.output(layer.intermediate(hidden), hidden)
        # 2-D from here on: indexing the [N, 1, V] logits afterwards copies them (25 MB a step for mBART).
        last = self.head.transform(hidden[:, -1, :])
        logits = linear_2d(last, self.head.decoder.weight, self.head.decoder.bias)
        return (logits, *present)


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
        self.lm_head = model.lm_head
        # A buffer of this module, so that moving it to a device or a dtype moves the bias too.
        self.register_buffer("final_logits_bias", model.final_logits_bias, persistent=False)
        self.heads = model.config.decoder_attention_heads
        self.head_dim = model.config.d_model // self.heads

    def forward(self, input_ids, encoder_attention_mask, *flat):
        decoder = self.decoder
        count = len(decoder.layers)
        cross, past = _pairs(flat[: 2 * count]), _pairs(flat[2 * count :])
        positions = new_positions(input_ids, past[0][0])
        hidden = decoder.embed_tokens(input_ids) + decoder.embed_positions.weight[positions + 2].unsqueeze(0)
        hidden = decoder.layernorm_embedding(hidden)
        keep = causal_keep(input_ids, past[0][0])
        dtype = hidden.dtype
        mask_add = (1.0 - encoder_attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        present = []
        for layer, (ck, cv), (pk, pv) in zip(decoder.layers, cross, past, strict=True):
            residual = hidden
            x = layer.self_attn_layer_norm(hidden)
            attn = layer.self_attn
            context, k, v = self_attention(
                _heads(attn.q_proj(x), self.heads),
                _heads(attn.k_proj(x), self.heads),
                _heads(attn.v_proj(x), self.heads),
                pk,
                pv,
                keep,
                self.head_dim,
                multiply=True,
            )
            present += [k, v]
            hidden = residual + attn.out_proj(_merge(context))
            residual = hidden
            x = layer.encoder_attn_layer_norm(hidden)
            q = _heads(layer.encoder_attn.q_proj(x), self.heads)
            context = grouped_cross_attention(q, ck, cv, mask_add, self.head_dim, multiply=True)
            hidden = residual + layer.encoder_attn.out_proj(_merge(context))
            residual = hidden
            x = layer.final_layer_norm(hidden)
            hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
        last = decoder.layer_norm(hidden[:, -1, :])
        logits = linear_2d(last, self.lm_head.weight, self.final_logits_bias.reshape(-1))
        return (logits, *present)
