"""bf16 for the `generate()` peers: a bf16 copy of the original models, and what this CPU offers for bf16.

A bf16 row's speed means little without the CPU's flags: with `amx_bf16` or `avx512_bf16` oneDNN multiplies
bf16 natively, without them (AVX2, or AVX-512 without BF16) every bf16 product is emulated through fp32 and
is usually slower than fp32 itself. So each bf16 row carries the flags it was measured with and says which.
The flags are read as the served runner reads them (`captioning.runtime.cpu_flags`); nothing here is served.
"""

from __future__ import annotations

import copy

from captioning.runtime.cpu_flags import BF16_PATHS, CPUINFO, read_flags

cpu_flags = read_flags  # the flags the served runner decides by

NATIVE_FLAGS = tuple(BF16_PATHS)  # x86; aarch64 lists "bf16" (BFMMLA)
# The flags a bench row reports, so figures from different CPUs can be told apart.
REPORTED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "bf16",
)
SWITCHED_OFF = "switched off (--no-bf16-peers)"


def reported_flags(flags: frozenset[str] | None) -> list[str] | None:
    """The bf16-relevant flags present, in a fixed order (None: unreadable)."""
    return None if flags is None else [f for f in REPORTED_FLAGS if f in flags]


def support(flags: frozenset[str] | None) -> dict:
    """`cpu_flags`, `native` (None: unknown) and the sentence a bf16 row states about its speed."""
    if flags is None:
        return {
            "cpu_flags": None,
            "native": None,
            "note": f"CPU flags unreadable ({CPUINFO}): whether bf16 matmuls are native here is unknown",
        }
    native = [f for f in (*NATIVE_FLAGS, "bf16") if f in flags]
    if native:
        note = f"bf16 matmuls run natively on this CPU ({', '.join(native)})"
    else:
        note = (
            "this CPU lists neither avx512_bf16 nor amx_bf16: bf16 matmuls are emulated through fp32, "
            "so expect bf16 slower than fp32 here; the speed is this CPU's, not an AMX or AVX512-BF16 one's"
        )
    return {"cpu_flags": reported_flags(flags), "native": bool(native), "note": note}


def unavailable() -> str | None:
    """Why this torch cannot run bf16 on the CPU, or None: the rows are skipped rather than failing a run."""
    try:
        import torch

        a = torch.ones(2, 3, dtype=torch.bfloat16)
        torch.nn.functional.linear(a, a).float().sum().item()
    except (ImportError, RuntimeError, TypeError) as exc:
        return f"torch cannot multiply bf16 on this CPU: {type(exc).__name__}: {exc}"[:300]
    return None


def bf16_copy(model):
    """`model.to(torch.bfloat16)` on a copy, leaving the fp32 model the baseline and fp32 peers use intact.

    The floating tensors are cast straight into the copy (deepcopy's memo), so no second fp32 model is held
    on the way (full-size mBART: 2.4 GB); tied weights stay tied."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    memo: dict = {}
    for tensor in tensors:
        if tensor.is_floating_point() and id(tensor) not in memo:
            cast = tensor.detach().to(torch.bfloat16)
            if isinstance(tensor, torch.nn.Parameter):
                cast = torch.nn.Parameter(cast, requires_grad=False)
            memo[id(tensor)] = cast
    clone = copy.deepcopy(model, memo)
    return clone.to(torch.bfloat16).eval()  # anything the memo missed
