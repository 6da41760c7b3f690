"""`captioning export`: two checkpoints in, one checked, servable Triton model repository out."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import tempfile
from pathlib import Path

from captioning import contract
from captioning.decoding.settings import Overrides
from captioning.export.repository import RepositoryOptions, write_repository

LOG = logging.getLogger(__name__)

# fp32: exact; int8: ONNX Runtime dynamic quantisation; bf16: the checkpoints' modules on the torch runner
# (vision and both generators), for CPUs with amx_bf16 or avx512_bf16 (docs/performance.md, "bf16 on CPU").
CPU_PRECISIONS = ("fp32", "int8", "bf16")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    target: str = "cpu"
    source_lang: str = contract.SOURCE_LANG
    target_lang: str = contract.TARGET_LANG
    max_length: int = contract.MAX_LENGTH
    validate: bool = True
    progress: bool = True
    repository: RepositoryOptions = RepositoryOptions()
    # Repository-wide overrides of each stage's checkpoint defaults (requests can still override beams and max
    # new tokens). min_new_tokens = max_new_tokens fixes output lengths: benchmarks make random-weight
    # checkpoints cost what trained ones do that way.
    caption: Overrides = Overrides()
    translation: Overrides = Overrides()
    # "int8": opt-in dynamic quantisation (export/quantize.py); "bf16" (cpu: needs --decoder-runner torch, which
    # the CLI implies): the checkpoints' modules in bf16. Neither is token-exact.
    precision: str = "fp32"
    # Opt-in: a `captioning trim-vocab` file; the translator decodes over those target ids only (not exact).
    translator_vocab: Path | None = None
    # Hub revisions (branch, tag or commit sha) every file of that source is read at: model, config,
    # generation config, processor, tokenizer. None: the hub's default branch; local directories ignore it.
    captioner_revision: str | None = None
    translator_revision: str | None = None

    @property
    def torch_on_cpu(self) -> bool:
        """A CPU repository whose generators serve the checkpoints' modules (`--decoder-runner torch`)."""
        return self.target == "cpu" and self.repository.decoder_runner == contract.TORCH_RUNNER

    def validate_options(self) -> None:
        if self.target not in contract.TARGETS:
            raise ValueError(f"target must be one of {', '.join(contract.TARGETS)}, got {self.target!r}")
        from captioning.export import gpu

        precisions = CPU_PRECISIONS if self.target == "cpu" else gpu.PRECISIONS
        if self.precision not in precisions:
            raise ValueError(
                f"precision on {self.target} must be one of {', '.join(precisions)}, got {self.precision!r}"
            )
        if self.target == "gpu" and self.translator_vocab is not None:
            raise ValueError("--translator-vocab is a CPU mode; GPU repositories decode the full vocabulary")
        runner = self.repository.decoder_runner
        if self.target == "cpu" and self.precision == "bf16" and runner != contract.TORCH_RUNNER:
            raise ValueError(
                "--precision bf16 on a CPU serves the checkpoints' modules on the torch runner (it implies "
                f"--decoder-runner torch): drop --decoder-runner {runner}"
            )
        if self.torch_on_cpu and self.precision == "int8":
            raise ValueError(
                "--decoder-runner torch serves the checkpoints' modules in fp32 or bf16; int8 is an ONNX "
                "Runtime mode: drop --precision int8 (or use --precision bf16), or use the ONNX runner"
            )
        if not 2 <= self.max_length <= 1024:
            raise ValueError(f"max_length must be in 2..1024, got {self.max_length}")
        self.repository.validate()


def caption_settings(model, max_length: int):
    """What `BlipForConditionalGeneration.generate(pixel_values, max_length=...)` uses: the text decoder's
    generation config, `[DEC]` (bos) as the prompt and `[SEP]` as the end token."""
    from captioning.decoding.generate import GenerationSettings

    text = model.config.text_config
    return GenerationSettings.from_hf(
        model.text_decoder.generation_config,
        prompt_ids=(text.bos_token_id,),
        eos_token_ids=(text.sep_token_id,),
        pad_token_id=text.pad_token_id,
        max_length=max_length,
    )


def translation_settings(model, tokenizer, target_lang: str, max_length: int):
    """What `model.generate(**tokenizer(text), max_length=..., forced_bos_token_id=<target>)` uses."""
    from captioning.decoding.generate import GenerationSettings

    config = model.generation_config
    start = config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    target_id = tokenizer.convert_tokens_to_ids(target_lang)
    if target_id is None or target_id == tokenizer.unk_token_id:
        raise ValueError(f"the translator's tokenizer has no language code {target_lang!r}")
    return GenerationSettings.from_hf(
        config, prompt_ids=(int(start),), max_length=max_length, forced_bos_token_id=int(target_id)
    )


def implied_runner(target: str, precision: str) -> str:
    """The decoder runner when none is named: bf16 on a CPU runs on the torch runner, anything else in-process."""
    if target == "cpu" and precision == "bf16":
        return contract.TORCH_RUNNER
    return contract.INPROCESS_RUNNER


def _trim_translator(mbart, path: Path, translation, in_place: bool):
    """Load a kept-token file, check that generation can still reach every id it needs, trim the model (the
    ONNX graphs are traced from it) or, for the torch runner (`in_place` false), leave the checkpoint whole:
    the runner trims it as it loads it."""
    from captioning.decoding.vocab import VocabMap
    from captioning.modules.vocab import check_vocab, trim_decoder_vocab

    vocab = VocabMap.load(path)
    vocab.remap(translation)  # raises ValueError naming a start/end/language id the file lacks
    if in_place:
        trim_decoder_vocab(mbart, vocab)
    else:
        check_vocab(mbart, vocab)
    return vocab


def _warn_if_slow_here(options: BuildOptions) -> None:
    """A bf16 CPU repository refuses to load on a CPU without native bf16: say so if this one is such a CPU
    (the serving machine may differ)."""
    if options.target != "cpu" or options.precision != "bf16":
        return
    from captioning.runtime import cpu_flags

    flags = cpu_flags.read_flags()
    try:
        cpu_flags.bf16_path(flags)
    except cpu_flags.SlowHalfPrecision:
        LOG.warning(
            "%s: the bf16 repository will refuse to load on a CPU like this one unless %s=1; serve it on a "
            "CPU with amx_bf16 or avx512_bf16 (the exporting and serving machines may differ)",
            cpu_flags.missing_sentence(flags),
            contract.ALLOW_SLOW_BF16_ENV,
        )


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def build_repository(
    captioner: str | Path, translator: str | Path, output: Path, options: BuildOptions = BuildOptions()
) -> Path:
    """Export, validate and lay out everything; the repository appears only once all of it succeeded. A LoRA
    adapter directory for either checkpoint is merged onto its base first (`export/adapters.py`)."""
    from captioning.export.adapters import merged_sources
    from captioning.export.graphs import load_captioner, load_translator

    options.validate_options()
    _warn_if_slow_here(options)
    output = Path(output)
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(
        prefix="captioning-export-", dir=output.parent if output.parent.exists() else None
    ) as tmp:
        work = Path(tmp)
        blip_source, mbart_source, options = merged_sources(captioner, translator, work, options)
        # Loaded once: the same models give the graphs and the generation settings.
        blip = load_captioner(blip_source, options.captioner_revision)
        mbart = load_translator(mbart_source, options.translator_revision)
        assets, image_size, tokenizer = _save_assets(blip_source, mbart_source, work, options)
        caption = caption_settings(blip, options.max_length).with_overrides(options.caption)
        translation = translation_settings(mbart, tokenizer, options.target_lang, options.max_length)
        translation = translation.with_overrides(options.translation)
        settings = {
            contract.CAPTION_STAGE: caption.to_dict(),
            contract.TRANSLATION_STAGE: translation.to_dict(),
        }
        vocab = None
        if options.translator_vocab is not None:
            vocab = _trim_translator(mbart, options.translator_vocab, translation, not options.torch_on_cpu)
            assets["translator_vocab"] = vocab.save(work / "vocab.json")
        graphs = _export_graphs(blip, mbart, work, options)
        manifest = {
            "captioner": str(captioner),
            "translator": str(translator),
            "captioner_revision": options.captioner_revision,
            "translator_revision": options.translator_revision,
            "target": options.target,
            "precision": options.precision,
            "translator_vocab": None if vocab is None else {"kept": len(vocab), "full_size": vocab.full_size},
            "source_lang": options.source_lang,
            "target_lang": options.target_lang,
            "generation": settings,
            "created": started.isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        _runner_assets(blip, mbart, work, graphs, assets, manifest, options)
        repository = served_options(options, mbart.config.max_position_embeddings)
        staging = work / "repository"
        write_repository(staging, graphs, assets, settings, image_size, manifest, repository)
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(output))
    LOG.info("model repository ready: %s", output)
    return output


def served_options(options: BuildOptions, max_positions: int) -> RepositoryOptions:
    """The repository options the configs are written with, completed from the build and the translator."""
    return dataclasses.replace(
        options.repository,
        gpu=_gpu_options(options),
        torch_precision="bf16" if options.target == "cpu" and options.precision == "bf16" else "fp32",
        src_lang=options.source_lang,
        # Longer text would index past mBART's learned positions.
        max_source_tokens=min(options.repository.max_source_tokens, max_positions),
        max_caption_tokens=max_positions,
    )


def _runner_assets(blip, mbart, work: Path, graphs: dict, assets: dict, manifest: dict, options) -> None:
    """What the repository's runners need beyond the graphs: the checkpoints where the torch runner serves
    them, and on a GPU the vision graph in its precision and the CUDA pool size. bf16 on a CPU serves vision
    on the torch runner too, from the vision model alone: the full BLIP checkpoint in every blip_vision
    instance would hold its text decoder for nothing (two thirds of BLIP-base's weights)."""
    if options.target == "gpu":
        _gpu_assets(blip, mbart, work, graphs, assets, options)
        manifest["cuda_memory_pool_byte_size"] = _pool_bytes(blip, options)
    elif options.torch_on_cpu:
        _checkpoint_assets(blip, mbart, work, assets)
        if options.precision == "bf16":
            blip.vision_model.save_pretrained(work / "vision_checkpoint")
            assets["vision_checkpoint"] = work / "vision_checkpoint"


def _gpu_options(options: BuildOptions):
    from captioning.export.gpu import GpuOptions

    if options.target != "gpu":
        return None
    base = options.repository.gpu or GpuOptions()
    return dataclasses.replace(base, precision=options.precision)


def _gpu_assets(blip, mbart, work: Path, graphs: dict[str, Path], assets: dict[str, Path], options) -> None:
    """The checkpoints the torch runner serves, and the vision graph in the precision it runs in."""
    from captioning.export.gpu import fp16_graph

    _checkpoint_assets(blip, mbart, work, assets)
    if _gpu_options(options).vision_precision == "fp16":
        LOG.info("converting %s to fp16 (LayerNorm and softmax stay fp32)", contract.VISION_MODEL)
        graphs[contract.VISION_MODEL] = fp16_graph(
            graphs[contract.VISION_MODEL], work / "fp16" / "blip_vision.onnx"
        )


def _checkpoint_assets(blip, mbart, work: Path, assets: dict[str, Path]) -> None:
    """The checkpoints the torch runner serves, saved as loaded (the repository carries them)."""
    blip.save_pretrained(work / "captioner_checkpoint")
    mbart.save_pretrained(work / "translator_checkpoint")
    assets["captioner_checkpoint"] = work / "captioner_checkpoint"
    assets["translator_checkpoint"] = work / "translator_checkpoint"


def _pool_bytes(blip, options: BuildOptions) -> int:
    from captioning.export.gpu import cuda_memory_pool_bytes

    vision = blip.config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    size = (vision.image_size, vision.image_size)
    return cuda_memory_pool_bytes(options.repository.max_batch_size, size, tokens, vision.hidden_size)


def _save_assets(captioner, translator, work: Path, options: BuildOptions):
    """The processor and both tokenizers as the repository will hold them; returns (assets, image size,
    translator tokenizer)."""
    from transformers import AutoTokenizer, BlipProcessor

    from captioning.runtime.tokenization import spm_protobuf_compat

    LOG.info("reading generation settings and tokenizers")
    processor = BlipProcessor.from_pretrained(str(captioner), revision=options.captioner_revision)
    processor.save_pretrained(work / "processor")
    with spm_protobuf_compat():
        tokenizer = AutoTokenizer.from_pretrained(
            str(translator), revision=options.translator_revision, src_lang=options.source_lang
        )
    tokenizer.save_pretrained(work / "translator_tokenizer")
    assets = {
        "processor": work / "processor",
        "captioner_tokenizer": work / "processor",
        "translator_tokenizer": work / "translator_tokenizer",
    }
    size = processor.image_processor.size
    return assets, (int(size["height"]), int(size["width"])), tokenizer


def _export_graphs(blip, mbart, work: Path, options: BuildOptions) -> dict[str, Path]:
    from captioning.export.graphs import ExportOptions, export_models

    # Generators on the torch runner serve the checkpoints themselves: only the vision graph is needed (in
    # bf16 it still gives blip_vision's tensor spec, and serves it in fp32 if its vision_runner is set to onnx).
    only = (contract.VISION_MODEL,) if options.torch_on_cpu else None
    export = ExportOptions(validate=options.validate, progress=options.progress, only=only)
    graphs = export_models(blip, mbart, work / "graphs", export).paths
    if options.precision == "int8":
        from captioning.export.quantize import quantize_graphs

        graphs = quantize_graphs(graphs, work / "int8", progress=options.progress)
    return graphs
