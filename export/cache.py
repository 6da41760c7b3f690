"""Torch helpers of the export validation: flat KV tensors -> transformers caches, numpy feeds -> tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


def cache_from_flat(past: Sequence[torch.Tensor]) -> EncoderDecoderCache:
    """Self-attention cache from `[k0, v0, k1, v1, ...]`; an empty cross cache so cross-attention is recomputed."""
    pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
    return EncoderDecoderCache(DynamicCache(ddp_cache_data=pairs), DynamicCache())


def feeds_to_torch(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}
