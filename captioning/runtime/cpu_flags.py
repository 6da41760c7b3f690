"""Whether this CPU multiplies bf16 natively, decided from its flags: the torch runner asks at model load.

With `amx_bf16` (Intel Sapphire Rapids and later: AMX tiles) or `avx512_bf16` (Cooper Lake, AMD Zen 4 and
later) oneDNN multiplies bf16 in hardware, two to seven times faster than fp32 (docs/performance.md). Without
either, every bf16 product is emulated through fp32 and bf16 is slower than fp32 itself, so a served bf16
model refuses to load there, naming the missing flags and the mode to use instead. The operator can load it
anyway (tests and CI on AVX2 machines) with `CAPTIONING_ALLOW_SLOW_BF16=1` (`contract.ALLOW_SLOW_BF16_ENV`),
at a WARNING. fp16 on a CPU is never a served mode (no export writes it; bf16 is the CPU's half precision).

Pure: the decisions take the flags as a set, so tests fake any CPU; only `read_flags` touches the system.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# The native bf16 paths, best first, and what each one is.
BF16_PATHS = {
    "amx_bf16": "AMX tiles through oneDNN",
    "avx512_bf16": "AVX512-BF16 dot products through oneDNN",
}
FAST_MODE = (
    "export with --precision fp32 (exact) or --precision int8 --translator-vocab (the fast mode for this CPU)"
)


class SlowHalfPrecision(RuntimeError):
    """Half precision on a CPU that would run it slower than fp32 (or cannot say it would not)."""


@dataclasses.dataclass(frozen=True)
class Bf16Path:
    """What a half-precision model on this CPU runs through: a native flag, or `emulated` (allowed by the
    operator's override)."""

    flag: str | None  # "amx_bf16", "avx512_bf16", or None: emulated through fp32
    sentence: str

    @property
    def native(self) -> bool:
        return self.flag is not None


def read_flags(path: Path = CPUINFO) -> frozenset[str] | None:
    """The first CPU's flags (x86 `flags`, aarch64 `Features`); None where they cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def missing_sentence(flags: frozenset[str] | None) -> str:
    """Why bf16 is slow here, in the words the refusal and the export's warning share."""
    if flags is None:
        return f"bf16 on this CPU may be slower than fp32: its flags could not be read from {CPUINFO}"
    return f"bf16 on this CPU would be slower than fp32: its flags lack {' and '.join(BF16_PATHS)}"


def bf16_path(flags: frozenset[str] | None) -> Bf16Path:
    """The native bf16 path of a CPU with these flags; SlowHalfPrecision naming the missing flags if none."""
    for flag, how in BF16_PATHS.items():
        if flags is not None and flag in flags:
            return Bf16Path(flag, f"bf16 on this CPU through {flag} ({how})")
    raise SlowHalfPrecision(
        f"{missing_sentence(flags)}; {FAST_MODE}, or set {contract.ALLOW_SLOW_BF16_ENV}=1 to load it anyway"
    )


def override_set(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(contract.ALLOW_SLOW_BF16_ENV, "").strip() == "1"


def half_precision_path(
    precision: str, flags: frozenset[str] | None, *, strict: bool, allowed: bool = False
) -> Bf16Path:
    """Decide, for a model in `precision` on a CPU with `flags`, and log the path taken.

    `strict` (a served model) refuses what the CPU would run slower than fp32 unless the operator `allowed`
    it; tools (the benches, which measure exactly that) only get the WARNING."""
    if precision == "fp16":
        if strict and not allowed:
            raise SlowHalfPrecision(
                "fp16 on a CPU is not a served mode: export with --precision bf16 (native on CPUs with "
                f"amx_bf16 or avx512_bf16), or set {contract.ALLOW_SLOW_BF16_ENV}=1 to load it anyway"
            )
        path = Bf16Path(None, "fp16 on a CPU: emulated through fp32 unless the CPU has AVX512-FP16/AMX-FP16")
        LOG.warning("%s", path.sentence)
        return path
    try:
        path = bf16_path(flags)
    except SlowHalfPrecision as refusal:
        if strict and not allowed:
            raise
        path = Bf16Path(None, f"{missing_sentence(flags)}; emulated through fp32")
        why = f"{contract.ALLOW_SLOW_BF16_ENV}=1" if allowed else "not a served model"
        LOG.warning("loading bf16 anyway (%s): %s", why, refusal)
        return path
    LOG.info("%s", path.sentence)
    return path


def check_here(precision: str, *, strict: bool) -> Bf16Path:
    """`half_precision_path` for this machine's CPU and environment."""
    return half_precision_path(precision, read_flags(), strict=strict, allowed=override_set())
