"""`captioning` command line: export, trim-vocab, serve, demo, make-fixtures. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

LOG = logging.getLogger("captioning")


def _export(args: argparse.Namespace) -> int:
    from captioning.export.build import BuildOptions, StageDefaults, build_repository
    from captioning.export.repository import RepositoryOptions

    options = BuildOptions(
        target=args.target,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        max_length=args.max_length,
        validate=not args.no_validate,
        precision=args.precision,
        translator_vocab=Path(args.translator_vocab) if args.translator_vocab else None,
        progress=not args.no_progress,
        repository=RepositoryOptions(
            max_batch_size=args.max_batch_size,
            decoder_runner=args.decoder_runner,
            intra_op_threads=args.intra_op_threads,
            cpu_slots=args.cpu_slots,
            instance_counts=tuple(_instance_count(item) for item in args.instances),
        ),
        caption=StageDefaults(args.caption_beams, args.caption_max_new_tokens, args.caption_min_new_tokens),
        translation=StageDefaults(
            args.translation_beams, args.translation_max_new_tokens, args.translation_min_new_tokens
        ),
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
    vocab = derive_vocab(args.translator, corpus, args.target_lang, pad_to=args.pad_to)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(output)
    print(f"kept {len(vocab)} of {vocab.full_size} target ids: {output}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from captioning.server import ServerOptions, serve_forever

    repository = args.repository
    if repository is None:
        from captioning.demo import prepare_repository

        repository, _, _ = prepare_repository(args.captioner, args.translator, Path(args.workdir))
    return serve_forever(
        ServerOptions(
            repository=Path(repository),
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
        )
    )


def _fixtures(args: argparse.Namespace) -> int:
    from captioning.fixtures import make_fixtures

    paths = make_fixtures(Path(args.output), seed=args.seed)
    print(f"captioner: {paths.blip}\ntranslator: {paths.mbart}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from captioning.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            captioner=args.captioner,
            translator=args.translator,
            images=[Path(p) for p in args.images],
            count=args.count,
            workdir=Path(args.workdir),
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioning", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="build a servable Triton model repository from two checkpoints")
    export.add_argument(
        "--captioner", required=True, help="BlipForConditionalGeneration: hub id or local dir"
    )
    export.add_argument(
        "--translator", required=True, help="MBartForConditionalGeneration: hub id or local dir"
    )
    export.add_argument("--output", required=True, help="model repository directory to (re)create")
    export.add_argument("--target", default="cpu", choices=["cpu"], help="where the repository will run")
    export.add_argument("--source-lang", default="en_XX")
    export.add_argument("--target-lang", default="ar_AR")
    export.add_argument(
        "--max-length", type=int, default=64, help="token limit of each stage, prompt included"
    )
    export.add_argument("--max-batch-size", type=int, default=16)
    export.add_argument(
        "--decoder-runner",
        default="inprocess",
        choices=["inprocess", "bls"],
        help="generators run their graphs in-process (fast on CPU) or call the graph models through Triton "
        "(bls: for GPU nodes with native backends)",
    )
    for stage in ("caption", "translation"):
        group = export.add_argument_group(f"{stage} defaults (override the checkpoint's generation config)")
        group.add_argument(f"--{stage}-beams", type=int, help="default beam width")
        group.add_argument(f"--{stage}-max-new-tokens", type=int, help="default limit of generated tokens")
        group.add_argument(
            f"--{stage}-min-new-tokens",
            type=int,
            help="no end token before this many (fixes lengths for benchmarks)",
        )
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
    export.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="fp32: token-exact with generate(); int8: opt-in dynamic quantisation, faster, not exact",
    )
    export.add_argument(
        "--translator-vocab",
        help="opt-in: a `captioning trim-vocab` file; the translator's decoder keeps only those target "
        "tokens (faster, not token-exact)",
    )
    export.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    export.add_argument("--no-progress", action="store_true")
    export.set_defaults(func=_export)

    trim = sub.add_parser(
        "trim-vocab",
        help="list the target tokens a corpus uses, for `captioning export --translator-vocab`",
    )
    trim.add_argument(
        "--translator", required=True, help="MBartForConditionalGeneration: hub id or local dir"
    )
    trim.add_argument("--output", required=True, help="JSON file to write")
    trim.add_argument("--target-lang", default="ar_AR")
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

    serve = sub.add_parser("serve", help="run tritonserver on a model repository in the foreground")
    serve.add_argument("--repository", help="a repository written by `captioning export`")
    serve.add_argument(
        "--captioner", default="Salesforce/blip-image-captioning-base", help="used without --repository"
    )
    serve.add_argument(
        "--translator", default="facebook/mbart-large-50-many-to-many-mmt", help="used without --repository"
    )
    serve.add_argument(
        "--workdir", default="build/demo", help="where repositories built from checkpoints are cached"
    )
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="export, serve and caption a few images end to end")
    demo.add_argument("--captioner", default="Salesforce/blip-image-captioning-base")
    demo.add_argument("--translator", default="facebook/mbart-large-50-many-to-many-mmt")
    demo.add_argument("--count", type=int, default=4, help="how many sample images")
    demo.add_argument("--workdir", default="build/demo", help="where repositories are built and cached")
    demo.add_argument("images", nargs="*", help="images to caption (default: shared Flickr8k samples)")
    demo.set_defaults(func=_demo)

    fixtures = sub.add_parser("make-fixtures", help="build small offline BLIP and mBART-50 test checkpoints")
    fixtures.add_argument("--output", required=True)
    fixtures.add_argument("--seed", type=int, default=0)
    fixtures.set_defaults(func=_fixtures)

    from captioning.training.commands import register_all

    register_all(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for users; the traceback with -v
        if args.verbose:
            raise
        LOG.error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
