"""`captioning build-engines` against a stub trtexec: profiles and command lines come from the repository."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from captioning import contract

pytestmark = pytest.mark.slow

STUB = """#!{python}
import json, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec --version")
    sys.exit(0)
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
plan = next(a.split("=", 1)[1] for a in args if a.startswith("--saveEngine="))
open(plan, "wb").write(b"stub plan")
"""


@pytest.fixture
def trtexec(tmp_path) -> tuple[Path, Path]:
    log = tmp_path / "calls.jsonl"
    path = tmp_path / "trtexec"
    path.write_text(STUB.format(python=sys.executable, log=str(log)))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path, log


@pytest.fixture(scope="module")
def repository(fixture_checkpoints, tmp_path_factory) -> Path:
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.gpu import GpuOptions
    from captioning.export.repository import RepositoryOptions

    options = BuildOptions(
        target="gpu", validate=False, progress=False,
        repository=RepositoryOptions(max_batch_size=8, gpu=GpuOptions(vision_engine="tensorrt")),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("engines") / "repository"
    return build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, path, options)


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_vision_plan_with_profiles_from_the_limits(repository, trtexec):
    from captioning.export.engines import BuildOptions, build_engines, needs_build

    stub, log = trtexec
    assert needs_build(repository, "NVIDIA H200", "10.5.0")
    plans = build_engines(repository, BuildOptions(trtexec=str(stub), gpu_name="NVIDIA H200"))
    assert plans == [repository / contract.VISION_MODEL / "1" / "model.plan"]
    (call,) = _calls(log)
    size = json.loads(
        (repository / contract.PREPROCESS_MODEL / "1" / "preprocessor_config.json").read_text()
    )["size"]
    h, w = size["height"], size["width"]
    assert f"--minShapes=pixel_values:1x3x{h}x{w}" in call
    assert f"--maxShapes=pixel_values:8x3x{h}x{w}" in call  # the repository's max_batch_size
    assert "--noTF32" in call  # fp32 repository: exact mode
    assert any(a.endswith("engines/nvidia-h200-trt10.5.0/model.plan") for a in call)
    assert not needs_build(repository, "NVIDIA H200", "10.5.0")
    assert needs_build(repository, "NVIDIA A100-SXM4-80GB", "10.5.0")  # another GPU needs its own engines
    build_engines(repository, BuildOptions(trtexec=str(stub), gpu_name="NVIDIA H200"))
    assert len(_calls(log)) == 1  # cached under its key: not rebuilt


def test_decoder_profiles_cover_rows_past_and_source(repository, trtexec):
    from captioning.export.engines import BuildOptions, build_engines

    stub, log = trtexec
    build_engines(
        repository, BuildOptions(trtexec=str(stub), gpu_name="L4", include_decoders=True, force=True)
    )
    calls = {
        Path(next(a for a in c if a.startswith("--onnx=")).split("=", 1)[1]).name: c for c in _calls(log)
    }
    step = calls["mbart_decoder.onnx"]
    rows = 8 * contract.MAX_BEAMS
    length = json.loads((repository / contract.TRANSLATOR_MODEL / "1" / "generation.json").read_text())[
        "max_length"
    ]
    max_shapes = next(a for a in step if a.startswith("--maxShapes="))
    min_shapes = next(a for a in step if a.startswith("--minShapes="))
    assert f"input_ids:{rows}x{length}" in max_shapes
    assert "past_key_values.0.key:1x" in min_shapes and "x0x" in min_shapes  # past length from 0
    assert f"x{length}x" in max_shapes.split("past_key_values.0.key:")[1].split(",")[0]
    assert "encoder_attention_mask:8x256" in max_shapes  # the translator's source-token limit


def test_fp16_builds_are_strongly_typed(fixture_checkpoints, tmp_path, trtexec):
    from captioning.export.build import BuildOptions as Export
    from captioning.export.build import build_repository
    from captioning.export.engines import BuildOptions, build_engines

    stub, log = trtexec
    repo = build_repository(
        fixture_checkpoints.blip, fixture_checkpoints.mbart, tmp_path / "repo",
        Export(target="gpu", precision="fp16", validate=False, progress=False),
    )  # fmt: skip
    build_engines(repo, BuildOptions(trtexec=str(stub), gpu_name="H200"))
    (call,) = _calls(log)
    assert "--stronglyTyped" in call and "--noTF32" not in call


def test_a_failed_build_names_the_graph(repository, tmp_path):
    from captioning.export.engines import BuildOptions, build_engines

    failing = tmp_path / "trtexec"
    failing.write_text(
        f"#!{sys.executable}\nimport sys\nprint('TensorRT v100500')\nsys.exit(0 if sys.argv[1:] == ['--version'] else 3)\n"
    )
    failing.chmod(0o755)
    with pytest.raises(RuntimeError, match="trtexec failed for model.onnx"):
        build_engines(repository, BuildOptions(trtexec=str(failing), gpu_name="X", force=True))
