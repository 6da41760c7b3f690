"""Shape-driven positions and masks, a 2-D linear, and preallocated self-attention caches for the step modules.

Positions and masks are computed from tensor shapes inside the traced graph, never from Python ints, so the
exported decoders work for any batch, new length T and past length P (including P = 0).
"""

from __future__ import annotations

import torch


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


class CacheSlot:
    """One layer's preallocated self-attention keys or values, [rows, H, capacity, Dh], filled up to `length`.

    The step modules accept a slot wherever they accept a past tensor: new keys are written in place and
    attention reads a view of the filled part, so no step concatenates (copies) the cache. Beam reordering is a
    gather on the slot's device. The ONNX export passes plain tensors instead and keeps its concatenation.
    """

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer = buffer
        self.rows = buffer.shape[0]
        self.length = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        _, heads, _, dim = self.buffer.shape
        return (self.rows, heads, self.length, dim)

    @property
    def device(self) -> torch.device:
        return self.buffer.device

    def view(self) -> torch.Tensor:
        return self.buffer[: self.rows, :, : self.length]

    def append(self, new: torch.Tensor) -> torch.Tensor:
        """Write `new` [rows, H, T, Dh] after the filled part; return the filled view including it."""
        end = self.length + new.shape[2]
        if new.shape[0] != self.rows or end > self.buffer.shape[2]:
            raise ValueError(
                f"cache slot holds {self.rows} rows x {self.buffer.shape[2]} positions; "
                f"cannot append {new.shape[0]} rows x {new.shape[2]} at position {self.length}"
            )
        self.buffer[: self.rows, :, self.length : end] = new
        self.length = end
        return self.view()

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row `rows[i]` as row i (also shrinks to one row per source and grows back)."""
        if len(rows) > self.buffer.shape[0]:
            raise ValueError(f"cache slot has room for {self.buffer.shape[0]} rows, not {len(rows)}")
        gathered = self.buffer[
            rows, :, : self.length
        ]  # a copy: the source is read before anything is written
        self.rows = len(rows)
        self.buffer[: self.rows, :, : self.length] = gathered
