"""The serving CPU decides bf16 (docs/performance.md, "bf16 on CPU"): faked flags for each kind of CPU, the
refusal sentence, the operator's override, and the torch runner refusing to load without either."""

from __future__ import annotations

import logging

import pytest

from captioning import contract
from captioning.runtime import cpu_flags
from captioning.runtime.cpu_flags import SlowHalfPrecision, bf16_path, half_precision_path, read_flags

AMX = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})  # e.g. AMD Zen 4
AVX512 = frozenset({"avx2", "avx512f", "avx512_vnni"})  # AVX-512 without BF16: still emulated
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})

REFUSAL = (
    "bf16 on this CPU would be slower than fp32: its flags lack amx_bf16 and avx512_bf16; export with "
    "--precision fp32 (exact) or --precision int8 --translator-vocab (the fast mode for this CPU), or set "
    "CAPTIONING_ALLOW_SLOW_BF16=1 to load it anyway"
)


def test_amx_is_preferred_then_avx512_bf16():
    assert bf16_path(AMX).flag == "amx_bf16"
    assert "AMX tiles through oneDNN" in bf16_path(AMX).sentence
    assert bf16_path(AVX512_BF16).flag == "avx512_bf16"
    assert bf16_path(AVX512_BF16).native


@pytest.mark.parametrize("flags", [AVX2, AVX512], ids=["avx2", "avx512-without-bf16"])
def test_a_cpu_without_native_bf16_is_refused_with_the_sentence(flags):
    with pytest.raises(SlowHalfPrecision) as refused:
        bf16_path(flags)
    assert str(refused.value) == REFUSAL
    assert isinstance(refused.value, RuntimeError)
    with pytest.raises(SlowHalfPrecision, match="flags lack amx_bf16 and avx512_bf16"):
        half_precision_path("bf16", flags, strict=True)


def test_unreadable_flags_are_refused_naming_the_file():
    with pytest.raises(SlowHalfPrecision, match="could not be read from /proc/cpuinfo"):
        half_precision_path("bf16", None, strict=True)


def test_the_override_loads_bf16_anyway_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=cpu_flags.__name__):
        path = half_precision_path("bf16", AVX2, strict=True, allowed=True)
    assert not path.native and "emulated through fp32" in path.sentence
    assert f"loading bf16 anyway ({contract.ALLOW_SLOW_BF16_ENV}=1)" in caplog.text
    assert "flags lack amx_bf16 and avx512_bf16" in caplog.text


def test_tools_are_warned_not_refused(caplog):
    """The benches measure bf16 on any CPU (that is the point of their rows): a WARNING, no refusal."""
    with caplog.at_level(logging.WARNING, logger=cpu_flags.__name__):
        assert not half_precision_path("bf16", AVX2, strict=False).native
    assert "not a served model" in caplog.text


def test_a_native_path_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger=cpu_flags.__name__):
        assert half_precision_path("bf16", AMX, strict=True).flag == "amx_bf16"
    assert "bf16 on this CPU through amx_bf16" in caplog.text


def test_fp16_on_a_cpu_is_refused_even_with_native_bf16():
    with pytest.raises(
        SlowHalfPrecision, match="fp16 on a CPU is not a served mode: export with --precision bf16"
    ):
        half_precision_path("fp16", AMX, strict=True)
    assert not half_precision_path("fp16", AMX, strict=True, allowed=True).native


def test_the_override_reads_exactly_one(monkeypatch):
    assert cpu_flags.override_set({contract.ALLOW_SLOW_BF16_ENV: "1"})
    assert not cpu_flags.override_set({contract.ALLOW_SLOW_BF16_ENV: "0"})
    assert not cpu_flags.override_set({})


def test_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\n")
    assert read_flags(x86) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert read_flags(arm) == {"fp", "asimd", "bf16"}
    assert read_flags(tmp_path / "missing") is None
    assert read_flags(tmp_path) is None  # a directory: unreadable as a file


def _vision(fixture_checkpoints, options):
    from captioning.runtime.torch_runner import load_checkpoint, vision_graph

    return vision_graph(load_checkpoint("blip", fixture_checkpoints.blip), options)


def test_the_runner_refuses_to_load_bf16_without_the_flags_or_the_override(fixture_checkpoints, monkeypatch):
    from captioning.runtime.torch_runner import TorchOptions

    monkeypatch.setattr(cpu_flags, "read_flags", lambda path=cpu_flags.CPUINFO: AVX2)
    monkeypatch.delenv(contract.ALLOW_SLOW_BF16_ENV, raising=False)
    with pytest.raises(SlowHalfPrecision, match="flags lack amx_bf16 and avx512_bf16"):
        _vision(fixture_checkpoints, TorchOptions(precision="bf16", strict_cpu=True))
    with pytest.raises(SlowHalfPrecision, match="fp16 on a CPU is not a served mode"):
        _vision(fixture_checkpoints, TorchOptions(precision="fp16", strict_cpu=True))
    _vision(fixture_checkpoints, TorchOptions(precision="fp32", strict_cpu=True))  # fp32 never asks
    monkeypatch.setenv(contract.ALLOW_SLOW_BF16_ENV, "1")
    assert _vision(fixture_checkpoints, TorchOptions(precision="bf16", strict_cpu=True)).dtype.itemsize == 2


def test_the_runner_logs_the_native_path(fixture_checkpoints, monkeypatch, caplog):
    from captioning.runtime.torch_runner import TorchOptions

    monkeypatch.setattr(cpu_flags, "read_flags", lambda path=cpu_flags.CPUINFO: AVX512_BF16)
    monkeypatch.delenv(contract.ALLOW_SLOW_BF16_ENV, raising=False)
    with caplog.at_level(logging.INFO):
        _vision(fixture_checkpoints, TorchOptions(precision="bf16", strict_cpu=True))
    assert "bf16 on this CPU through avx512_bf16" in caplog.text
