"""Linear layers with their weights prepacked for oneDNN: the torch runner's matrix products on a CPU.

PyTorch's CPU wheel multiplies fp32 matrices with MKL, which on AMD CPUs takes a slow generic path: measured on
2 cores of an AMD EPYC (AVX-512), a [80, 1024] x [1024, 4096] product took 6.9 ms in MKL and 2.9 ms in oneDNN
with the weight prepacked once (ONNX Runtime's MLAS: 2.8 ms), and mBART's 250k-row output layer at 5 rows 131
against 32 ms (docs/performance-history.md, run 25). Prepacked, the torch runner's products run at ONNX
Runtime's speed on a CPU, so CPU repositories can use it too (in-flight batching with merged cohorts).

Still fp32 products, summed in another order than MKL's (as ONNX Runtime's are): tokens are tested equal to
`generate()`. The packed layers replace the model's own (`pack_linears` takes ownership of the module tree);
the originals' weights are released, except where another module shares them (tied embeddings).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

LOG = logging.getLogger(__name__)

BATCH_HINT = 80  # rows a product is packed for (16 sources x 5 beams); any row count works


def available() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """`x @ weight.T + bias` over any leading dimensions, with the weight in oneDNN's blocked layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)
            self.bias = None if bias is None else bias.detach().reshape(-1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.reshape(*shape[:-1], self.out_features)


def pack_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` and `OutputLayer` under `module` (fp32, on the CPU) with a `PackedLinear`;
    returns how many were replaced (0 where oneDNN's ops are missing: the products stay PyTorch's)."""
    from captioning.modules.steps import OutputLayer

    if not available():
        LOG.warning("this PyTorch build has no oneDNN linear ops: the torch runner's products stay MKL's")
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Linear, OutputLayer)) and child.weight.dtype == torch.float32:
                bias = child.bias
                setattr(parent, name, PackedLinear(child.weight, bias))
                count += 1
    return count
