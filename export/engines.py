"""`captioning build-engines REPO`: TensorRT plans built on the GPU node from a repository's ONNX graphs.

Engines are not portable between GPUs or TensorRT versions, so they are built where they run and stored under a
key of both (`<model>/1/engines/<gpu>-trt<version>/model.plan`); the served `model.plan` is a copy of the
current key's. Optimisation profiles come from the repository's own limits: batch 1..max_batch_size for the
vision graph; for the decoder graphs (`--all`, for BLS deployments on TensorRT) rows 1..batch x beams, past
length 0..max length and source length 1..the stage's source limit. fp32 builds turn TF32 off (exact mode);
fp16 builds are strongly typed from the fp16 graph, whose LayerNorm and softmax are fp32 (`captioning.export.gpu`).
The builder is `trtexec` from the TensorRT container; tests run a stub in its place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Profile:
    """min/opt/max shapes per input, as trtexec's --minShapes/--optShapes/--maxShapes take them."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def flags(self) -> list[str]:
        out = []
        for index, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            spec = ",".join(f"{name}:{'x'.join(map(str, s[index]))}" for name, s in self.shapes.items())
            out.append(f"{flag}={spec}")
        return out


@dataclasses.dataclass(frozen=True)
class EngineJob:
    model: str  # the Triton model that serves the plan
    graph: Path
    plan: Path
    profile: Profile
    precision: str


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a repository allows, read from its configs, manifest and generation settings."""

    max_batch_size: int
    image_size: tuple[int, int]
    max_source_tokens: int
    caption_length: int
    translation_length: int
    precision: str

    @classmethod
    def read(cls, repository: Path) -> Limits:
        from captioning.export.model_config import read_config

        manifest = json.loads((repository / "manifest.json").read_text())
        vision = read_config(repository / contract.VISION_MODEL / "config.pbtxt")
        translator = read_config(repository / contract.TRANSLATOR_MODEL / "config.pbtxt")
        dims = list(vision.input[0].dims)  # [3, H, W]
        source = translator.parameters[contract.PARAM_MAX_SOURCE_TOKENS].string_value

        def length(model: str) -> int:
            return json.loads((repository / model / "1" / "generation.json").read_text())["max_length"]

        return cls(
            max_batch_size=vision.max_batch_size,
            image_size=(dims[1], dims[2]),
            max_source_tokens=int(source),
            caption_length=length(contract.CAPTION_MODEL),
            translation_length=length(contract.TRANSLATOR_MODEL),
            precision=manifest.get("precision", "fp32"),
        )


def vision_profile(limits: Limits) -> Profile:
    height, width = limits.image_size
    b = limits.max_batch_size
    return Profile(
        {
            contract.PIXEL_VALUES: (
                (1, 3, height, width),
                (max(1, b // 2), 3, height, width),
                (b, 3, height, width),
            )
        }
    )


def step_profile(meta: dict, limits: Limits, max_length: int, source_len: int) -> Profile:
    """A decoder step graph: rows 1..batch x beams, new tokens 1..max_length, past 0..max_length."""
    batch, rows = limits.max_batch_size, limits.max_batch_size * contract.MAX_BEAMS
    shapes: dict = {}
    for name in meta["input_names"]:
        static = [d for d in meta["shapes"][name] if isinstance(d, int) and d > 0]
        if name == "input_ids":
            shapes[name] = ((1, 1), (rows // 2, 1), (rows, max_length))
        elif name == "encoder_attention_mask":
            shapes[name] = ((1, 1), (batch // 2 or 1, source_len), (batch, source_len))
        elif name.startswith("cross."):
            transposed = name.endswith(".value")  # values are stored transposed: [B, H, Dh, S]
            shapes[name] = tuple(
                (b, *_cross_dims(static[0], static[-1], s, transposed))
                for b, s in ((1, 1), (batch // 2 or 1, source_len), (batch, source_len))
            )
        elif name.startswith("past_key_values."):
            heads, dim = static[0], static[-1]
            shapes[name] = (
                (1, heads, 0, dim),
                (rows // 2, heads, max_length // 2, dim),
                (rows, heads, max_length, dim),
            )
    return Profile(shapes)


def _cross_dims(heads: int, dim: int, source: int, transposed: bool) -> tuple[int, int, int]:
    return (heads, dim, source) if transposed else (heads, source, dim)


def engine_key(gpu_name: str, trt_version: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{slug}-trt{trt_version}"


def jobs(repository: Path, key: str, include_decoders: bool = False) -> list[EngineJob]:
    limits = Limits.read(repository)
    precision = "fp32" if limits.precision == "fp32" else "fp16"
    vision_dir = repository / contract.VISION_MODEL / "1"
    out = [
        EngineJob(
            contract.VISION_MODEL,
            vision_dir / "model.onnx",
            vision_dir / "engines" / key / "model.plan",
            vision_profile(limits),
            precision,
        )
    ]
    if include_decoders:
        out += _decoder_jobs(repository, key, limits)
    return out


def _decoder_jobs(repository: Path, key: str, limits: Limits) -> list[EngineJob]:
    vision = _graph_meta(repository / contract.VISION_MODEL / "1" / "model.onnx")
    vision_tokens = vision["shapes"][contract.IMAGE_EMBEDS][1]
    stages = (
        (contract.CAPTION_MODEL, limits.caption_length, vision_tokens),
        (contract.TRANSLATOR_MODEL, limits.translation_length, limits.max_source_tokens),
    )
    out = []
    for model, max_length, source_len in stages:
        graphs = json.loads((repository / model / "1" / "graphs.json").read_text())
        step = graphs["step"]
        meta = _graph_meta(repository / step["file"])
        plan = repository / model / "1" / "engines" / key / f"{step['model']}.plan"
        out.append(
            EngineJob(
                model,
                repository / step["file"],
                plan,
                step_profile(meta, limits, max_length, source_len),
                "fp32",
            )
        )
    return out


def _graph_meta(path: Path) -> dict:
    from captioning.export.repository import graph_metadata

    return graph_metadata(path)


def trtexec_command(job: EngineJob, trtexec: str, timing_cache: Path) -> list[str]:
    cmd = [trtexec, f"--onnx={job.graph}", f"--saveEngine={job.plan}", *job.profile.flags()]
    cmd += [f"--timingCacheFile={timing_cache}", "--skipInference"]
    if job.precision == "fp32":
        cmd.append("--noTF32")  # exact mode: fp32 products as generate() computes them
    else:
        cmd.append("--stronglyTyped")  # follow the fp16 graph's types: LayerNorm and softmax stay fp32
    return cmd


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    trtexec: str = "trtexec"
    include_decoders: bool = False
    gpu_name: str | None = None  # None: ask the GPU (nvidia-smi)
    trt_version: str | None = None  # None: ask trtexec
    force: bool = False


def build_engines(repository: Path, options: BuildOptions = BuildOptions()) -> list[Path]:
    """Build what is missing for this GPU and TensorRT version; returns the served plans."""
    repository = Path(repository)
    trtexec = shutil.which(options.trtexec) or options.trtexec
    key = engine_key(options.gpu_name or gpu_name(), options.trt_version or trt_version(trtexec))
    built = []
    for job in jobs(repository, key, options.include_decoders):
        if options.force or not job.plan.is_file():
            job.plan.parent.mkdir(parents=True, exist_ok=True)
            command = trtexec_command(job, trtexec, job.plan.parent.parent / "timing.cache")
            LOG.info("building %s: %s", job.plan, " ".join(command))
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0 or not job.plan.is_file():
                raise RuntimeError(
                    f"trtexec failed for {job.graph.name} ({result.returncode}): {result.stderr[-2000:]}"
                )
        served = job.graph.parent / job.plan.name
        shutil.copy2(job.plan, served)
        built.append(served)
    return built


def needs_build(repository: Path, gpu: str, trt: str, include_decoders: bool = False) -> bool:
    """The container entrypoint's question: does this repository lack engines for this GPU and TensorRT?"""
    return any(
        not job.plan.is_file() for job in jobs(Path(repository), engine_key(gpu, trt), include_decoders)
    )


def gpu_name() -> str:
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError("no GPU found (nvidia-smi failed); build engines on the GPU node that serves them")
    return result.stdout.splitlines()[0].strip()


def trt_version(trtexec: str) -> str:
    """trtexec prints `[TensorRT v100500]` for 10.5.0."""
    result = subprocess.run([trtexec, "--version"], capture_output=True, text=True)
    text = result.stdout + result.stderr
    packed = re.search(r"TensorRT v(\d{5,6})\b", text)
    if packed:
        number = int(packed.group(1))
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    dotted = re.search(r"TensorRT[^\d]*(\d+(?:\.\d+)+)", text)
    if not dotted:
        raise RuntimeError(f"cannot read the TensorRT version from `{trtexec} --version`")
    return dotted.group(1)
