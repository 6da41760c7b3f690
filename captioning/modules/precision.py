"""fp32 islands for the half-precision modes (bf16 on a CPU or a GPU, fp16 on a GPU): what quality needs.

A runner in bf16/fp16 casts every module to that dtype (weights, activations, caches), which makes the
products fast; a few reductions lose too much in 8 (bf16) or 11 (fp16) mantissa bits, so they stay fp32, as
the GPU's fp16 vision graph keeps them (`captioning.export.gpu.FP32_OPS`):

- LayerNorm: `Fp32LayerNorm` holds fp32 weights (whatever the module is cast to) and normalises `x.float()`,
  returning x's dtype; `keep_fp32_islands` swaps it in for every `nn.LayerNorm`.
- Attention: from the scores product on, the scaling, the mask and the softmax run in fp32 (`widened`), and
  only the probabilities go back to the half dtype for the values product (`narrowed`). The step modules
  (`captioning.modules.steps`) do it in their own arithmetic; BLIP's vision attention, transformers' eager
  softmax in the module's dtype, is replaced by `BlipVisionAttention`, which computes the same in that order.
  mBART's encoder runs torch's `scaled_dot_product_attention`, whose CPU and GPU kernels already accumulate
  the scores and the softmax in fp32 for half inputs.
- The scores the search ranks: the runner takes `logits.float()` before log-softmax, processors and top-k.

Each branch is taken only for half-precision tensors: in fp32 every operation is the one it was, so the exact
mode and the exported ONNX graphs are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

HALF = (torch.float16, torch.bfloat16)


def widened(scores: torch.Tensor) -> torch.Tensor:
    """Attention scores in fp32 from here on (half-precision scores only)."""
    return scores.float() if scores.dtype in HALF else scores


def narrowed(probs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Probabilities back in the values' dtype for the values product (a no-op in fp32)."""
    return probs if probs.dtype == dtype else probs.to(dtype)


class Fp32LayerNorm(nn.Module):
    """`nn.LayerNorm` computed in fp32 on any input dtype, its weights fp32 under any module cast."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.normalized_shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        weight, bias = norm.weight, norm.bias
        self.weight = None if weight is None else nn.Parameter(weight.detach().float(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return narrowed(out, x.dtype)

    def _apply(self, fn, recurse=True):
        """`module.to(device, dtype)`, `.half()`, `.cuda()`...: follow the device, never the dtype. The target
        device is read off `fn` applied to an empty fp32 tensor, so the weights are never rounded on the way."""
        reference = self.weight if self.weight is not None else self.bias
        device = reference.device if reference is not None else torch.device("cpu")
        target = fn(torch.empty(0, device=device)).device
        return super()._apply(lambda t: t.to(target), recurse)


class BlipVisionAttention(nn.Module):
    """transformers' `BlipAttention` (the vision encoder's) with the scores, their scaling and the softmax in
    fp32 under half precision; the same operations in the same order in fp32. Shares the original's weights."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.qkv, self.projection = attention.qkv, attention.projection
        self.num_heads, self.embed_dim, self.scale = attention.num_heads, attention.embed_dim, attention.scale

    def forward(self, hidden_states: torch.Tensor, head_mask: torch.Tensor | None = None, **_kwargs):
        batch, length, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        scores = widened(torch.matmul(query, key.transpose(-1, -2))) * self.scale
        probs = narrowed(torch.softmax(scores, dim=-1), value.dtype)
        if head_mask is not None:
            probs = probs * head_mask
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(batch, length, self.embed_dim)
        return self.projection(context), None


def _replacement(child: nn.Module) -> nn.Module | None:
    from transformers.models.blip.modeling_blip import BlipAttention

    if isinstance(child, nn.LayerNorm):
        return Fp32LayerNorm(child)
    if isinstance(child, BlipAttention):
        return BlipVisionAttention(child)
    return None


def keep_fp32_islands(module: nn.Module) -> dict[str, int]:
    """Swap, in place, every LayerNorm for `Fp32LayerNorm` and BLIP's vision attention for
    `BlipVisionAttention`, before the module is cast to a half dtype. A module reached from two parents gets
    one replacement; modules swapped before are left as they are. Returns the count of each kind swapped."""
    swapped: dict[int, nn.Module] = {}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in swapped:
                replacement = _replacement(child)
                if replacement is None:
                    continue
                swapped[id(child)] = replacement
            setattr(parent, name, swapped[id(child)])
    counts: dict[str, int] = {}
    for replacement in swapped.values():
        counts[type(replacement).__name__] = counts.get(type(replacement).__name__, 0) + 1
    return counts
