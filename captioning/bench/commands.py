"""`captioning bench` and `captioning make-bench-checkpoints`: arguments in, `BenchOptions` out."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioning.bench.options import BenchOptions


def _concurrency(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _repository(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR, got {text!r}")
    return label, Path(path)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        captioner=args.captioner,
        translator=args.translator,
        images_dir=args.images_dir,
        num_images=args.num_images,
        num_texts=args.num_texts,
        caption_num_beams=args.caption_num_beams,
        caption_tokens=args.caption_tokens,
        translation_num_beams=args.translation_num_beams,
        translation_tokens=args.translation_tokens,
        concurrency=args.concurrency,
        component_concurrency=args.component_concurrency,
        requests=args.requests,
        repeats=args.repeats,
        steady=not args.burst,
        repositories=tuple(args.repository),
        output_dir=args.output_dir,
        baseline=not args.no_baseline,
        peers=not args.no_peers,
        bf16_peers=not args.no_bf16_peers,
        peer_batch_size=args.peer_batch_size,
        triton=not args.baseline_only,
        threads=args.threads,
        timeout_s=args.timeout,
    )


def _bench(args: argparse.Namespace) -> int:
    from captioning.bench.report import format_table
    from captioning.bench.run import run_bench

    results = run_bench(options_from_args(args))
    print(format_table(results))
    print(f"\nresults: {args.output_dir / 'results.json'}\nplot: {args.output_dir / 'throughput.png'}")
    return 1 if results.get("failed") else 0  # the others were measured, but the run is not whole


def _make_checkpoints(args: argparse.Namespace) -> int:
    from captioning.bench.checkpoints import cached_bench_checkpoints, make_bench_checkpoints

    if args.output is None:
        paths = cached_bench_checkpoints(seed=args.seed)
    else:
        paths = make_bench_checkpoints(args.output, seed=args.seed)
    print(f"captioner: {paths.blip}\ntranslator: {paths.mbart}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = BenchOptions()
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the original one-at-a-time PyTorch pipeline against Triton repositories",
        description=run_doc(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_inputs(bench.add_argument_group("checkpoints and inputs"), defaults)
    _add_generation(
        bench.add_argument_group("generation (fixed output lengths: min = max new tokens)"), defaults
    )
    _add_load(bench.add_argument_group("Triton load"), defaults)
    bench.add_argument(
        "--output-dir", type=Path, default=defaults.output_dir, help="results.json, plot, logs"
    )
    bench.add_argument("--no-baseline", action="store_true", help="skip the in-process PyTorch baseline")
    bench.add_argument(
        "--baseline-only", action="store_true", help="measure the in-process baseline and peers alone"
    )
    bench.add_argument(
        "--no-peers",
        action="store_true",
        help="skip batched generate() and CTranslate2 (captioning.bench.peers)",
    )
    bench.add_argument(
        "--no-bf16-peers",
        action="store_true",
        help="skip batched generate() in bf16 (slower than fp32 on a CPU without avx512_bf16/amx_bf16)",
    )
    bench.add_argument(
        "--peer-batch-size",
        type=int,
        default=defaults.peer_batch_size,
        help="batch size of the batched generate() and CTranslate2 peers",
    )
    bench.add_argument("--threads", type=int, default=0, help="baseline torch threads (0: all cores)")
    bench.set_defaults(func=_bench)
    _register_make_checkpoints(subparsers)
    register_verify(subparsers)
    register_gpu_check(subparsers)
    register_inflight_bench(subparsers)


def _add_inputs(models, defaults: BenchOptions) -> None:
    models.add_argument(
        "--captioner", type=Path, help="BLIP checkpoint dir (default: full-size bench checkpoints)"
    )
    models.add_argument(
        "--translator", type=Path, help="mBART checkpoint dir (default: full-size bench checkpoints)"
    )
    models.add_argument("--images-dir", type=Path, default=defaults.images_dir, help="JPEGs to send")
    models.add_argument("--num-images", type=int, default=defaults.num_images, help="first N images, sorted")
    models.add_argument(
        "--num-texts",
        type=int,
        default=defaults.num_texts,
        help="translation-stage inputs: the first caption of each of the first N images",
    )


def _add_generation(gen, defaults: BenchOptions) -> None:
    gen.add_argument("--caption-num-beams", "--caption-beams", type=int, default=defaults.caption_num_beams)
    gen.add_argument("--caption-tokens", type=int, default=defaults.caption_tokens, help="new caption tokens")
    gen.add_argument(
        "--translation-num-beams", "--translation-beams", type=int, default=defaults.translation_num_beams
    )
    gen.add_argument("--translation-tokens", type=int, default=defaults.translation_tokens)


def _add_load(load, defaults: BenchOptions) -> None:
    load.add_argument(
        "--repository",
        type=_repository,
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a model repository to measure (repeatable); none: export one from the checkpoints, "
        "with the generation settings above as its defaults",
    )
    load.add_argument(
        "--concurrency",
        type=_concurrency,
        default=defaults.concurrency,
        help="comma-separated concurrency levels for arabic_caption",
    )
    load.add_argument(
        "--component-concurrency",
        type=int,
        help="concurrency for english_caption and translator (default: the largest level)",
    )
    load.add_argument(
        "--requests",
        type=int,
        default=defaults.requests,
        help="requests per window (at least 2x concurrency)",
    )
    load.add_argument(
        "--repeats",
        type=int,
        default=defaults.repeats,
        help="measurements per point (baseline: at least this many passes over the images, spread "
        "before, between and after the repositories)",
    )
    load.add_argument(
        "--burst",
        action="store_true",
        help="measure one burst of --requests per window instead of steady state (fill and drain included)",
    )
    load.add_argument(
        "--timeout", type=float, default=defaults.timeout_s, help="seconds per perf_analyzer run"
    )


def _register_make_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    from captioning.bench import checkpoints as bench_checkpoints

    make = subparsers.add_parser(
        "make-bench-checkpoints",
        help="build full-size BLIP-base and mBART-large-50 checkpoints with random weights (offline)",
        description=bench_checkpoints.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument(
        "--output", type=Path, help="where to write blip/ and mbart/ (default: cached under .cache)"
    )
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=_make_checkpoints)


def run_doc() -> str | None:
    from captioning.bench import run

    return run.__doc__


def _verify(args: argparse.Namespace) -> int:
    from captioning.bench.verify import VerifyOptions, format_report, run_verify, write_report

    manifest = _manifest(args.repository) if args.repository else {}
    captioner = args.captioner or manifest.get("captioner")
    translator = args.translator or manifest.get("translator")
    if not (captioner and translator):
        raise ValueError("give --captioner and --translator (or --repository, whose manifest names them)")
    options = VerifyOptions(
        url=args.url,
        captioner=captioner,
        translator=translator,
        images=args.images,
        count=args.count,
        device=args.device,
        caption_num_beams=args.caption_num_beams,
        translation_num_beams=args.translation_num_beams,
        max_length=args.max_length,
        min_match=args.min_match,
        # A checkpoint taken from the manifest is read at the revision it was exported at.
        captioner_revision=None if args.captioner else manifest.get("captioner_revision"),
        translator_revision=None if args.translator else manifest.get("translator_revision"),
    )
    report = run_verify(options)
    print(format_report(report))
    if args.output:
        print(f"report: {write_report(report, args.output)}")
    return 0 if report["passed"] else 1


def _manifest(repository: str) -> dict:
    import json

    return json.loads((Path(repository) / "manifest.json").read_text())


def register_verify(subparsers: argparse._SubParsersAction) -> None:
    from captioning import contract

    verify = subparsers.add_parser(
        "verify",
        help="check a running server's captions and translations against generate() on this node's device",
    )
    verify.add_argument("--url", default="localhost:8001", help="[grpc://|http://]HOST:PORT of the server")
    verify.add_argument("--captioner", help="the BLIP checkpoint the server was exported from")
    verify.add_argument("--translator", help="the mBART checkpoint the server was exported from")
    verify.add_argument("--repository", help="read the checkpoints from this repository's manifest instead")
    verify.add_argument(
        "--images", type=Path, help="a folder of images (default: the shared Flickr8k images)"
    )
    verify.add_argument("--count", type=int, default=50)
    verify.add_argument("--device", default="auto", help="where generate() runs: auto, cpu, cuda")
    verify.add_argument("--caption-num-beams", type=int)
    verify.add_argument("--translation-num-beams", type=int)
    verify.add_argument("--max-length", type=int, default=contract.MAX_LENGTH, help="as exported")
    verify.add_argument("--min-match", type=float, default=1.0, help="exit 1 below this rate (fast modes)")
    verify.add_argument("--output", type=Path, help="write the JSON report here")
    verify.set_defaults(func=_verify)


def _gpu_check(args: argparse.Namespace) -> int:
    from captioning.bench.gpu_check import CheckOptions, format_table, run_check

    if args.smoke:
        options = CheckOptions.smoke_test(args.output, device=args.device)
    else:
        options = CheckOptions(device=args.device, output=args.output)
    report = run_check(options)
    print(format_table(report))
    print(f"\nreport: {args.output}")
    return 0


def register_gpu_check(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser(
        "gpu-check",
        help="on a GPU node: the torch runner's tokens against generate() and its speed against the peers",
    )
    check.add_argument("--device", default="cuda")
    check.add_argument("--output", type=Path, default=Path("build/gpu-check/gpu-check.json"))
    check.add_argument(
        "--smoke", action="store_true", help="tiny inputs, fixture checkpoints (plumbing only)"
    )
    check.set_defaults(func=_gpu_check)


def _inflight_bench(args: argparse.Namespace) -> int:
    from captioning.bench.inflight import InflightBenchOptions, format_rows, run_inflight_bench

    options = InflightBenchOptions(
        translator=args.translator,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        clients=args.clients,
        requests=args.requests,
        beams=args.beams,
        tokens=args.tokens,
        output_dir=args.output_dir,
    )
    results = run_inflight_bench(options)
    print(format_rows(results))
    print(f"\nresults: {args.output_dir / 'results.json'}\nplot: {args.output_dir / 'inflight.png'}")
    return 0 if all(row["equal_to_batch"] == row["sentences"] for row in results["rows"]) else 1


def register_inflight_bench(subparsers: argparse._SubParsersAction) -> None:
    from captioning.bench.inflight import InflightBenchOptions

    defaults = InflightBenchOptions()
    bench = subparsers.add_parser(
        "bench-inflight",
        help="translation on the torch runner: batch decoding against in-flight batching with cohorts apart and "
        "merged, in process (exits 1 if any row's tokens differ from batch decoding)",
    )
    bench.add_argument(
        "--translator", help="mBART checkpoint dir or hub id (default: the full-size bench one)"
    )
    bench.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N")
    bench.add_argument("--precision", default=defaults.precision, choices=["fp32", "bf16", "fp16"])
    bench.add_argument(
        "--threads", type=int, default=defaults.threads, help="CPU threads (0: torch's default)"
    )
    bench.add_argument("--clients", type=int, default=defaults.clients, help="closed-loop clients")
    bench.add_argument("--requests", type=int, default=defaults.requests, help="sentences in all")
    bench.add_argument("--beams", type=int, default=defaults.beams)
    bench.add_argument("--tokens", type=int, default=defaults.tokens, help="new tokens per sentence (forced)")
    bench.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    bench.set_defaults(func=_inflight_bench)
