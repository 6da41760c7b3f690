"""`captioning soak`, `fuzz` and `overload`: traffic against a running server, every answer checked
(docs/reliability.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    register_soak(subparsers)
    register_fuzz(subparsers)
    register_overload(subparsers)


def _duration(text: str) -> float:
    """`90`, `90s`, `10m` or `2h` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def _soak(args: argparse.Namespace) -> int:
    from captioning.bench.soak import SoakOptions, format_report, run_soak, write_outputs

    options = SoakOptions(
        url=args.url,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        server_pid=args.server_pid,
        output_dir=args.output_dir,
    )
    report = run_soak(options)
    print(format_report(report))
    paths = write_outputs(report, args.output_dir)
    print(f"\nresults: {paths['json']}\nplot: {paths['plot']}")
    return 0 if report["failed"] == 0 else 1


def register_soak(subparsers: argparse._SubParsersAction) -> None:
    soak = subparsers.add_parser(
        "soak", help="hold real traffic against a server, check every answer and watch its memory"
    )
    soak.add_argument("--url", default="localhost:8001")
    soak.add_argument("--concurrency", type=int, default=16)
    soak.add_argument("--duration", type=_duration, default=600.0, help="e.g. 90s, 10m, 2h")
    soak.add_argument("--warmup", type=_duration, default=60.0, help="memory growth counts from here")
    soak.add_argument("--server-pid", type=int, help="the tritonserver process (default: the only one here)")
    soak.add_argument("--output-dir", type=Path, default=Path("build/soak"))
    soak.set_defaults(func=_soak)


def _fuzz(args: argparse.Namespace) -> int:
    import json

    from captioning.bench.fuzz import run_fuzz
    from captioning.datasets import default_data_dir
    from captioning.testing.fuzz import corpus

    images = sorted((default_data_dir() / "flickr8k" / "Images").glob("*.jpg"))[:8]
    good = [p.read_bytes() for p in images]
    report = run_fuzz(args.url, corpus(good[0], count=args.count), good, concurrency=args.concurrency)
    summary = {k: v for k, v in report.items() if k != "outcomes"}
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not report["wrong"] else 1


def register_fuzz(subparsers: argparse._SubParsersAction) -> None:
    fuzz = subparsers.add_parser(
        "fuzz", help="send malformed and odd requests beside good ones; check every answer"
    )
    fuzz.add_argument("--url", default="localhost:8001")
    fuzz.add_argument("--count", type=int, default=1000)
    fuzz.add_argument("--concurrency", type=int, default=8)
    fuzz.add_argument("--output", type=Path)
    fuzz.set_defaults(func=_fuzz)


def _overload(args: argparse.Namespace) -> int:
    from captioning.bench.overload import (
        OverloadOptions,
        criterion_met,
        format_report,
        run_overload,
        write_outputs,
    )

    options = OverloadOptions(
        url=args.url,
        kind=args.kind,
        multiple=args.multiple,
        duration_s=args.duration,
        capacity=args.capacity,
        capacity_s=args.capacity_duration,
        capacity_concurrency=args.capacity_concurrency,
        client_timeout_s=args.client_timeout,
        plain_clients=args.plain_clients,
        burst=args.burst,
        requests_per_client=args.requests_per_client,
    )
    report = run_overload(options)
    print(format_report(report))
    paths = write_outputs(report, args.output_dir)
    print(f"\nresults: {paths['json']}\nplot: {paths['plot']}")
    return 0 if criterion_met(report) else 1


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def register_overload(subparsers: argparse._SubParsersAction) -> None:
    overload = subparsers.add_parser(
        "overload",
        help="open-loop traffic at a multiple of the measured capacity, or a burst of clients at once: is the "
        "excess shed at once, and what goodput is left?",
    )
    overload.add_argument("--url", default="localhost:8001")
    overload.add_argument(
        "--kind", choices=("text", "image"), default="text", help="translator texts or arabic_caption images"
    )
    overload.add_argument("--multiple", type=float, default=6.0, help="offered rate over the capacity")
    overload.add_argument("--duration", type=_duration, default=60.0, help="of the open-loop phase")
    overload.add_argument(
        "--capacity", type=float, help="requests/s (default: measured in a closed loop first)"
    )
    overload.add_argument("--capacity-duration", type=_duration, default=30.0)
    overload.add_argument(
        "--capacity-concurrency", type=int, default=8, help="closed-loop clients measuring the capacity"
    )
    overload.add_argument("--client-timeout", type=float, default=30.0, help="each client's timeout (s)")
    overload.add_argument(
        "--plain-clients",
        action="store_true",
        help="send with plain tritonclient gRPC (client_timeout only, no request timeout), as perf_analyzer does",
    )
    overload.add_argument(
        "--burst",
        type=_at_least(0),
        default=0,
        metavar="N",
        help="N clients arriving at once, in place of the open loop (--multiple and --duration then unused)",
    )
    overload.add_argument(
        "--requests-per-client",
        type=_at_least(1),
        default=3,
        metavar="K",
        help="with --burst: each client's requests, one after another",
    )
    overload.add_argument("--output-dir", type=Path, default=Path("build/overload"))
    overload.set_defaults(func=_overload)
