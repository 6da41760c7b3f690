"""Torch helpers shared by the two decoder wrappers: flat KV tensors <-> transformers caches, masks, positions.

Positions and masks are computed from tensor shapes inside the traced graph, never from Python ints, so the
exported decoders work for any batch, new length T and past length P (including P = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


def cache_from_flat(past: Sequence[torch.Tensor]) -> EncoderDecoderCache:
    """Self-attention cache from `[k0, v0, k1, v1, ...]`; an empty cross cache so cross-attention is recomputed."""
    pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
    return EncoderDecoderCache(DynamicCache(ddp_cache_data=pairs), DynamicCache())


def new_positions(input_ids: torch.Tensor, past_key: torch.Tensor) -> torch.Tensor:
    """Absolute positions `P .. P+T-1` of the new tokens, shape [T]."""
    new_len = input_ids.shape[1]
    past_len = past_key.shape[2]
    return torch.arange(new_len, dtype=torch.int64, device=input_ids.device) + past_len


def causal_keep(input_ids: torch.Tensor, past_key: torch.Tensor) -> torch.Tensor:
    """Boolean [B, T, P+T]: new token t may attend to every cached key and to new keys up to itself."""
    positions = new_positions(input_ids, past_key)
    total = torch.arange(past_key.shape[2] + input_ids.shape[1], dtype=torch.int64, device=input_ids.device)
    keep = total.unsqueeze(0) <= positions.unsqueeze(1)
    return keep.unsqueeze(0).expand(input_ids.shape[0], -1, -1)


def linear_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T + bias` for x [N, D], exported as a single Gemm(transB=1).

    Only 2-D: a 3-D `F.linear` exports as MatMul(Transpose(W)); constant folding then stores a transposed copy
    of a (tied) embedding matrix next to the original, which for mBART-50 is an extra 1 GB.
    """
    if x.dim() != 2:
        raise ValueError(f"linear_2d takes [N, D] inputs, got shape {tuple(x.shape)}")
    return torch.nn.functional.linear(x, weight, bias)


def feeds_to_torch(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}
