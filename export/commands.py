"""`captioning export` and `captioning trim-vocab`. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioning import contract


def _export(args: argparse.Namespace) -> int:
    from captioning.export.build import BuildOptions, build_repository, implied_runner
    from captioning.export.gpu import GpuOptions
    from captioning.export.repository import RepositoryOptions

    options = BuildOptions(
        target=args.target,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        max_length=args.max_length,
        validate=not args.no_validate,
        precision=args.precision,
        translator_vocab=Path(args.translator_vocab) if args.translator_vocab else None,
        captioner_revision=args.captioner_revision,
        translator_revision=args.translator_revision,
        progress=not args.no_progress,
        repository=RepositoryOptions(
            max_batch_size=args.max_batch_size,
            max_queue_size=args.max_queue_size,
            queue_timeout_s=args.queue_timeout,
            latency_budget_s=args.latency_budget,
            inflight=args.inflight,
            decoder_runner=args.decoder_runner or implied_runner(args.target, args.precision),
            intra_op_threads=args.intra_op_threads,
            cpu_slots=args.cpu_slots,
            instance_counts=tuple(_instance_count(item) for item in args.instances),
            gpu=GpuOptions(vision_engine=args.vision_engine) if args.target == "gpu" else None,
        ),
        caption=_overrides(args, contract.CAPTION_STAGE),
        translation=_overrides(args, contract.TRANSLATION_STAGE),
    )
    path = build_repository(args.captioner, args.translator, Path(args.output), options)
    print(f"model repository written to {path}")
    return 0


def _instance_count(item: str) -> tuple[str, int]:
    name, sep, count = item.partition("=")
    if not sep or not count.isdigit():
        raise ValueError(f"--instances takes MODEL=COUNT, got {item!r}")
    return name, int(count)


def _trim_vocab(args: argparse.Namespace) -> int:
    from captioning.export.vocab_trim import TrimCorpus, derive_vocab

    corpus = TrimCorpus(
        arabic_captions=tuple(Path(p) for p in args.arabic_captions),
        pairs=tuple(Path(p) for p in args.pairs),
        text=tuple(Path(p) for p in args.text),
    )
    vocab = derive_vocab(
        args.translator, corpus, args.target_lang, pad_to=args.pad_to, revision=args.translator_revision
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(output)
    print(f"kept {len(vocab)} of {vocab.full_size} target ids: {output}")
    return 0


def _overrides(args: argparse.Namespace, stage: str):
    from captioning.decoding.settings import Overrides

    return Overrides(
        getattr(args, f"{stage}_num_beams"),
        getattr(args, f"{stage}_max_new_tokens"),
        getattr(args, f"{stage}_min_new_tokens"),
    )


def _add_revision(parser: argparse.ArgumentParser, source: str) -> None:
    """`--captioner-revision` / `--translator-revision`: pin a hub id."""
    parser.add_argument(
        f"--{source}-revision",
        metavar="REV",
        help=f"branch, tag or commit sha of the {source} hub id, read for every file of it (model, config, "
        "generation config, processor/tokenizer); default: the hub's default branch; a local dir ignores it",
    )


def register(sub: argparse._SubParsersAction) -> None:
    _register_export(sub)
    _register_trim_vocab(sub)
    _register_build_engines(sub)


def _build_engines(args: argparse.Namespace) -> int:
    from captioning.export.engines import BuildOptions, build_engines

    options = BuildOptions(trtexec=args.trtexec, include_decoders=args.all, force=args.force)
    for plan in build_engines(Path(args.repository), options):
        print(f"engine ready: {plan}")
    return 0


def _register_build_engines(sub: argparse._SubParsersAction) -> None:
    engines = sub.add_parser(
        "build-engines",
        help="on a GPU node: build TensorRT plans for this GPU and TensorRT version from a GPU repository",
    )
    engines.add_argument("repository", help="a repository written by `captioning export --target gpu`")
    engines.add_argument(
        "--trtexec", default="trtexec", help="the TensorRT builder (in the Triton container)"
    )
    engines.add_argument("--all", action="store_true", help="also the decoder step graphs (BLS deployments)")
    engines.add_argument("--force", action="store_true", help="rebuild even where this GPU's engines exist")
    engines.set_defaults(func=_build_engines)


def _register_export(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="build a servable Triton model repository from two checkpoints")
    export.add_argument(
        "--captioner", required=True, help="BlipForConditionalGeneration: hub id, local or LoRA adapter dir"
    )
    export.add_argument(
        "--translator", required=True, help="MBartForConditionalGeneration: hub id, local or LoRA adapter dir"
    )
    _add_revision(export, "captioner")
    _add_revision(export, "translator")
    export.add_argument("--output", required=True, help="model repository directory to (re)create")
    export.add_argument(
        "--target",
        default="cpu",
        choices=contract.TARGETS,
        help="cpu: ONNX Runtime in Python-backend models (runs anywhere); gpu: NVIDIA's Triton 24.10 container, "
        "vision on ONNX Runtime/TensorRT, generators on the torch runner (docs/gpu.md)",
    )
    export.add_argument(
        "--vision-engine",
        default="onnxruntime",
        choices=["onnxruntime", "tensorrt"],
        help="--target gpu: blip_vision as onnxruntime_onnx, or as a tensorrt_plan built on the node by "
        "`captioning build-engines`",
    )
    export.add_argument("--source-lang", default=contract.SOURCE_LANG)
    export.add_argument("--target-lang", default=contract.TARGET_LANG)
    export.add_argument(
        "--max-length",
        type=int,
        default=contract.MAX_LENGTH,
        help="token limit of each stage, prompt included",
    )
    _add_batching(export)
    export.add_argument(
        "--decoder-runner",
        default=None,
        choices=contract.DECODER_RUNNERS,
        help="generators run their ONNX graphs in-process (the default), call the graph models through Triton "
        "(bls), or run the checkpoints' own modules in-process (torch: the runner GPU repositories use, oneDNN "
        "on a CPU; with --inflight its cohorts share one forward pass per step; fp32 or bf16, with or without "
        "--translator-vocab); --precision bf16 on a CPU implies torch",
    )
    _add_stage_defaults(export)
    _add_serving_layout(export)
    _add_precision(export)
    export.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    export.add_argument("--no-progress", action="store_true")
    export.set_defaults(func=_export)


def _add_precision(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8", "fp16", "bf16"],
        help="fp32: token-exact with generate(); int8 (cpu): opt-in dynamic quantisation; fp16, bf16 (gpu): "
        "opt-in half precision; bf16 (cpu): vision and both generators on the torch runner in bf16 (LayerNorm, "
        "softmax and the scores stay fp32), for CPUs with amx_bf16 or avx512_bf16: elsewhere the served "
        f"models refuse to load unless {contract.ALLOW_SLOW_BF16_ENV}=1 (docs/performance.md, bf16 on CPU); "
        "the fast modes are not exact",
    )
    export.add_argument(
        "--translator-vocab",
        help="opt-in: a `captioning trim-vocab` file; the translator's decoder keeps only those target "
        "tokens (faster, not token-exact; on the torch runner the checkpoint is trimmed as it loads)",
    )


def _add_batching(export: argparse.ArgumentParser) -> None:
    export.add_argument("--max-batch-size", type=int, default=contract.MAX_BATCH_SIZE)
    export.add_argument(
        "--max-queue-size",
        type=int,
        default=None,
        help="requests each model may queue; past it a request is answered UNAVAILABLE at once (default: two "
        "batches per model instance, so no queued request outwaits the timeout while two batches run shorter; "
        "0: unbounded; docs/reliability.md)",
    )
    export.add_argument(
        "--queue-timeout",
        type=float,
        default=contract.QUEUE_TIMEOUT_S,
        metavar="S",
        help="seconds a request may wait in a model's queue before it is answered UNAVAILABLE (0: no limit)",
    )
    export.add_argument(
        "--latency-budget",
        type=float,
        default=contract.LATENCY_BUDGET_S,
        metavar="S",
        help="admission at the door: a request is admitted only if the whole pipeline is forecast to answer it "
        "within its own timeout or, when it sends none, within this many seconds; the rest are answered "
        "UNAVAILABLE at once (size it from the measured throughput: docs/reliability.md; 0: no door); "
        "default: %(default)s",
    )
    export.add_argument(
        "--inflight",
        action="store_true",
        help="in-flight batching of the generators: a request joins the decoding batch at the next step and "
        "leaves when answered (same tokens; docs/performance.md says when it pays)",
    )


def _add_stage_defaults(export: argparse.ArgumentParser) -> None:
    for stage in (contract.CAPTION_STAGE, contract.TRANSLATION_STAGE):
        group = export.add_argument_group(f"{stage} defaults (override the checkpoint's generation config)")
        group.add_argument(f"--{stage}-num-beams", f"--{stage}-beams", type=int, help="default beam width")
        group.add_argument(f"--{stage}-max-new-tokens", type=int, help="default limit of generated tokens")
        group.add_argument(
            f"--{stage}-min-new-tokens",
            type=int,
            help="no end token before this many (fixes lengths for benchmarks)",
        )


def _add_serving_layout(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per model instance (0: all cores; 1 avoids oversubscription when "
        "the pipeline's stages run at once)",
    )
    export.add_argument(
        "--cpu-slots",
        default="0",
        metavar="N|auto",
        help="at most N graph runs at once across the server's models, so single-threaded instances never "
        "time-slice a core ('auto': the serving machine's cores; 0: no limit; pair with --intra-op-threads 1)",
    )
    export.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="MODEL=COUNT",
        help="model instances of one model (repeatable), e.g. translator=2 blip_vision=2",
    )


def _register_trim_vocab(sub: argparse._SubParsersAction) -> None:
    trim = sub.add_parser(
        "trim-vocab",
        help="list the target tokens a corpus uses, for `captioning export --translator-vocab`",
    )
    trim.add_argument(
        "--translator", required=True, help="MBartForConditionalGeneration: hub id or local dir"
    )
    _add_revision(trim, "translator")
    trim.add_argument("--output", required=True, help="JSON file to write")
    trim.add_argument("--target-lang", default=contract.TARGET_LANG)
    trim.add_argument(
        "--arabic-captions", action="append", default=[], help="Arabic Flickr8k file (image#n<TAB>caption)"
    )
    trim.add_argument(
        "--pairs",
        action="append",
        default=[],
        help="source<TAB>target file (Tatoeba); the target side is used",
    )
    trim.add_argument("--text", action="append", default=[], help="one target-language sentence per line")
    trim.add_argument(
        "--pad-to",
        type=int,
        default=0,
        help="fill up to this many ids with the lowest unused ones (benchmarks: model a real tokenizer's size)",
    )
    trim.set_defaults(func=_trim_vocab)
