"""Checkpoints -> the four validated ONNX graphs of the contract (orchestration: load, export, save, validate)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ExportError, UnsupportedCheckpointError
from .validate import CaseResult, ExportJob, validate_graph

logger = logging.getLogger(__name__)

# The protobuf limit is 2 GiB; stay clear of it so graph + metadata always fit in one file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 17
    validate: bool = True
    progress: bool = True
    # None: store weights as external data only when the graph would not fit in one protobuf.
    external_data: bool | None = None
    # Override every graph's declared tolerance (tests use 0 to prove the check bites).
    atol: float | None = None
    rtol: float | None = None
    ort_threads: int | None = None
    seed: int = 0
    only: tuple[str, ...] | None = None  # export these graphs only (None: all six)


@dataclass
class ExportResult:
    paths: dict[str, Path] = field(default_factory=dict)
    validation: dict[str, list[CaseResult]] = field(default_factory=dict)


def export_graphs(
    captioner: str | Path,
    translator: str | Path,
    output_dir: Path,
    options: ExportOptions = ExportOptions(),  # noqa: B008 - frozen, so a shared default is safe
) -> dict[str, Path]:
    """Export (and by default validate) blip_vision, blip_text_decoder, mbart_encoder, mbart_decoder."""
    blip = load_captioner(captioner)
    mbart = load_translator(translator)
    return export_models(blip, mbart, Path(output_dir), options).paths


def export_models(
    blip: Any,
    mbart: Any,
    output_dir: Path,
    options: ExportOptions = ExportOptions(),  # noqa: B008
) -> ExportResult:
    from .blip import blip_jobs
    from .mbart import mbart_jobs

    jobs = [*blip_jobs(blip, options.seed), *mbart_jobs(mbart, options.seed + 10)]
    if options.only is not None:
        jobs = [job for job in jobs if job.spec.name in options.only]
    return run_jobs(jobs, Path(output_dir), options)


def run_jobs(jobs: Sequence[ExportJob], output_dir: Path, options: ExportOptions) -> ExportResult:
    from tqdm.auto import tqdm

    output_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult()
    with tqdm(
        total=len(jobs) * (2 if options.validate else 1), desc="export", disable=not options.progress
    ) as bar:
        for job in jobs:
            bar.set_postfix_str(f"{job.spec.name}: export")
            path = export_job(job, output_dir, options)
            result.paths[job.spec.name] = path
            bar.update()
            if options.validate:
                bar.set_postfix_str(f"{job.spec.name}: validate")
                cases = validate_graph(
                    job.spec,
                    path,
                    job.cases,
                    atol=options.atol,
                    rtol=options.rtol,
                    intra_op_threads=options.ort_threads,
                )
                result.validation[job.spec.name] = cases
                worst = max((c.worst for c in cases), default=0.0)
                logger.info("validated %s on %d cases: max abs diff %.2e", job.spec.name, len(cases), worst)
                bar.update()
    return result


def export_job(job: ExportJob, output_dir: Path, options: ExportOptions) -> Path:
    """Trace one wrapper with the TorchScript exporter and save it as `<name>.onnx` (+ `.onnx.data` if large)."""
    import torch

    spec = job.spec
    target = output_dir / spec.filename
    for stale in graph_files(target):
        stale.unlink()
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=f".{spec.name}-") as tmp:
        raw = Path(tmp) / spec.filename
        # The tracer warns about transformers' cache bookkeeping (empty-cache constants, `numel() == 0`);
        # none of it reaches the outputs, which validation on several shapes (P = 0 included) confirms.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                job.module,
                job.example,
                str(raw),
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()},
                opset_version=options.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        _save(raw, target, options.external_data)
    size = sum(p.stat().st_size for p in graph_files(target))
    logger.info("exported %s (%.1f MB)", target, size / 1e6)
    return target


def _save(raw: Path, target: Path, external_data: bool | None) -> None:
    """Move the exporter's output into place, gathering any weights into one `<file>.data` next to it."""
    import onnx

    spilled = len(list(raw.parent.iterdir())) > 1  # the exporter wrote per-tensor external files
    weights = sum(p.stat().st_size for p in raw.parent.iterdir())
    use_external = weights > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if not spilled and not use_external:
        shutil.move(str(raw), target)
        return
    model = onnx.load(str(raw), load_external_data=True)
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=use_external,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data",
        size_threshold=1024,
    )


def graph_files(path: Path) -> list[Path]:
    """The .onnx file and its external-data file, i.e. what must be copied to move the graph."""
    return [p for p in (path, path.with_name(f"{path.name}.data")) if p.exists()]


def _check_architecture(
    checkpoint: str | Path, model_type: str, class_name: str, revision: str | None
) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(checkpoint), revision=revision)
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read the config of checkpoint {str(checkpoint)!r}: {error}") from error
    architectures = getattr(config, "architectures", None) or []
    if config.model_type != model_type or (architectures and class_name not in architectures):
        found = ", ".join(architectures) or f"model_type {config.model_type!r}"
        raise UnsupportedCheckpointError(str(checkpoint), class_name, found)


def _load(checkpoint: str | Path, model_type: str, class_name: str, revision: str | None) -> Any:
    """The checkpoint in fp32 with eager attention; `revision` (branch, tag or commit of a hub id; None: the
    default branch; local directories ignore it) reaches the config, the weights and the generation config."""
    import torch
    import transformers

    _check_architecture(checkpoint, model_type, class_name, revision)
    cls = getattr(transformers, class_name)
    model = cls.from_pretrained(
        str(checkpoint), revision=revision, torch_dtype=torch.float32, attn_implementation="eager"
    )
    logger.info("loaded %s from %s (%.1fM parameters)", class_name, checkpoint, model.num_parameters() / 1e6)
    return model.eval()


def load_captioner(checkpoint: str | Path, revision: str | None = None) -> Any:
    return _load(checkpoint, "blip", "BlipForConditionalGeneration", revision)


def load_translator(checkpoint: str | Path, revision: str | None = None) -> Any:
    return _load(checkpoint, "mbart", "MBartForConditionalGeneration", revision)
