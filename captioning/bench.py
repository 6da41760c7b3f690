"""`captioning bench`: the original app's one-request-at-a-time PyTorch pipeline against Triton, in one run.

Both sides use the same checkpoints, images and generation settings (beams, and min = max new tokens so
random weights cost what trained ones do). The baseline runs in this process exactly as the notebook
served it; each Triton repository is served on free ports and loaded by `perf_analyzer` with real JPEG
bytes, while Triton's statistics API gives the per-model queue/compute breakdown of every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from captioning.fixtures import default_data_dir

if TYPE_CHECKING:
    from captioning.perf_analyzer import PerfRun

LOG = logging.getLogger(__name__)

PIPELINE = "arabic_caption"
COMPONENTS = (("english_caption", "image"), ("translator", "text"))


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    captioner: Path | None = None  # None: the full-size bench checkpoints (built and cached offline)
    translator: Path | None = None
    images_dir: Path = default_data_dir() / "flickr8k" / "Images"
    num_images: int = 8
    caption_beams: int = 3
    caption_tokens: int = 20  # min = max new tokens
    translation_beams: int = 5
    translation_tokens: int = 24
    concurrency: tuple[int, ...] = (1, 4, 16)
    component_concurrency: int | None = None  # english_caption and translator; None: the largest above
    requests: int = 16  # per perf_analyzer window (at least 2x the concurrency)
    repeats: int = 3
    steady: bool = True  # steady-state windows under continuous load; False: one burst per window
    repositories: tuple[tuple[str, Path], ...] = ()  # (label, dir); none: build one from the checkpoints
    output_dir: Path = Path("build/bench")
    baseline: bool = True
    triton: bool = True  # False: the baseline alone
    threads: int = 0  # torch threads for the baseline; 0: all cores
    timeout_s: float = 1800.0  # per perf_analyzer run

    def validate(self) -> None:
        if (self.captioner is None) != (self.translator is None):
            raise ValueError("give both --captioner and --translator, or neither")
        if not (self.baseline or self.triton):
            raise ValueError("nothing to measure: both the baseline and Triton are switched off")
        if self.num_images < 1 or self.repeats < 1 or self.requests < 1:
            raise ValueError("--num-images, --repeats and --requests must be positive")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be positive, got {self.concurrency}")

    @property
    def side_concurrency(self) -> int:
        return self.component_concurrency or max(self.concurrency)

    def requests_for(self, concurrency: int) -> int:
        return max(self.requests, 2 * concurrency)

    def settings(self) -> dict:
        return {
            "caption_beams": self.caption_beams,
            "caption_new_tokens": self.caption_tokens,
            "translation_beams": self.translation_beams,
            "translation_new_tokens": self.translation_tokens,
        }


# ------------------------------------------------------------------------------------------ inputs


def load_images(options: BenchOptions) -> list[tuple[str, bytes]]:
    paths = sorted(Path(options.images_dir).glob("*.jpg"))[: options.num_images]
    if not paths:
        raise FileNotFoundError(f"no .jpg images in {options.images_dir}")
    return [(p.name, p.read_bytes()) for p in paths]


def caption_texts(options: BenchOptions, names: list[str]) -> list[str]:
    """Real Flickr8k captions (the first per image) as the translator's input data."""
    from captioning.fixtures import flickr_captions

    pairs = flickr_captions(Path(options.images_dir).parent.parent)
    first: dict[str, str] = {}
    for name, caption in pairs:
        first.setdefault(name, caption)
    texts = [first[n] for n in names if n in first]
    return texts or [caption for _, caption in pairs[: len(names)]]


def resolve_checkpoints(options: BenchOptions) -> tuple[Path, Path]:
    if options.captioner is not None and options.translator is not None:
        return Path(options.captioner), Path(options.translator)
    from captioning.bench_checkpoints import cached_bench_checkpoints

    paths = cached_bench_checkpoints()
    return paths.blip, paths.mbart


# ------------------------------------------------------------------------------------------ triton runs


def _one_measurement(run: PerfRun, workdir: Path) -> dict:
    """A steady-state measurement that never settles falls back to one burst (recorded), so a long bench
    run is not lost to one noisy row."""
    from captioning.perf_analyzer import PerfAnalyzerError, run_perf_analyzer

    try:
        return {**run_perf_analyzer(run, workdir).to_dict(), "window": "steady" if run.steady else "burst"}
    except PerfAnalyzerError as exc:
        if not (run.steady and "stable measurement" in str(exc)):
            raise
        LOG.warning("%s c=%d did not reach a steady state; measuring one burst", run.model, run.concurrency)
        return {
            **run_perf_analyzer(dataclasses.replace(run, steady=False), workdir).to_dict(),
            "window": "burst",
        }


def measure(server, model: str, data: Path, concurrency: int, options: BenchOptions, workdir: Path) -> dict:
    """`repeats` perf_analyzer windows of one model at one concurrency, with the server stats around each."""
    from captioning.bench_report import add_counters, breakdown, model_statistics, stats_delta, summary
    from captioning.perf_analyzer import PerfRun

    run = PerfRun(
        model=model,
        url=server.grpc_url,
        input_data=data,
        concurrency=concurrency,
        requests=options.requests_for(concurrency),
        timeout_s=options.timeout_s,
        steady=options.steady,
    )
    windows, totals = [], {}
    for _ in range(options.repeats):
        before = model_statistics(server.http_url)
        windows.append(_one_measurement(run, workdir))
        add_counters(totals, stats_delta(before, model_statistics(server.http_url)))
    result = {"model": model, "concurrency": concurrency, "requests": run.requests, "windows": windows}
    for key in ("throughput", "p50_ms", "p95_ms", "p99_ms", "avg_ms"):
        result[key] = summary([w[key] for w in windows])
    result["server"] = breakdown(totals)
    LOG.info(
        "%s c=%d: %.3f infer/s, p50 %.0f ms",
        model,
        concurrency,
        result["throughput"]["median"],
        result["p50_ms"]["median"],
    )
    return result


def run_repository(label: str, repository: Path, inputs: dict[str, Path], options: BenchOptions) -> list:
    from captioning.perf_analyzer import PerfRun, run_perf_analyzer
    from captioning.server import ServerOptions, TritonServer, free_port

    workdir = Path(options.output_dir) / "perf" / label
    workdir.mkdir(parents=True, exist_ok=True)
    server_options = ServerOptions(
        repository=Path(repository),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=workdir / "tritonserver.log",
        ready_timeout_s=900.0,  # full-size graphs load slowly on a busy 2-core machine
    )
    runs = []
    with TritonServer(server_options) as server:
        LOG.info("%s: warming up %s", label, PIPELINE)
        # At the highest concurrency, so batch shapes the windows will see are allocated before them.
        top = max(options.concurrency)
        warm = PerfRun(
            PIPELINE, server.grpc_url, inputs["image"], top, top, timeout_s=options.timeout_s, steady=False
        )
        run_perf_analyzer(warm, workdir)
        plan = [(PIPELINE, "image", c) for c in options.concurrency]
        plan += [(model, kind, options.side_concurrency) for model, kind in COMPONENTS]
        for model, kind, concurrency in plan:
            runs.append(
                {"label": label, **measure(server, model, inputs[kind], concurrency, options, workdir)}
            )
    return runs


def default_repository(options: BenchOptions, captioner: Path, translator: Path) -> Path:
    """Export once per checkpoints and settings; later runs reuse it."""
    from captioning.export.build import BuildOptions, StageDefaults, build_repository

    key = hashlib.sha256(f"{captioner.resolve()}|{translator.resolve()}|{options.settings()}".encode())
    output = Path(options.output_dir) / f"repository-{key.hexdigest()[:12]}"
    if (output / "manifest.json").is_file():
        LOG.info("reusing model repository %s", output)
        return output
    build = BuildOptions(
        progress=False,
        caption=StageDefaults(options.caption_beams, options.caption_tokens, options.caption_tokens),
        translation=StageDefaults(
            options.translation_beams, options.translation_tokens, options.translation_tokens
        ),
    )
    LOG.info("exporting a model repository to %s", output)
    return build_repository(captioner, translator, output, build)


def run_bench(options: BenchOptions) -> dict:
    from captioning import bench_report
    from captioning.bench_baseline import Baseline, pass_plan
    from captioning.perf_analyzer import (
        bytes_input_data,
        require_perf_analyzer,
        text_input_data,
        write_input_data,
    )

    options.validate()
    repositories = list(options.repositories) if options.triton else []
    if options.triton:
        require_perf_analyzer()  # fail before the long baseline, not after
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    captioner, translator = resolve_checkpoints(options)
    images = load_images(options)
    inputs = {
        "image": write_input_data(
            output_dir / "input-images.json", bytes_input_data("image", [d for _, d in images])
        ),
        "text": write_input_data(
            output_dir / "input-texts.json",
            text_input_data("text", caption_texts(options, [n for n, _ in images])),
        ),
    }
    if options.triton and not repositories:
        repositories = [("triton", default_repository(options, captioner, translator))]
    results = {
        "settings": options.settings(),
        "machine": bench_report.machine(),
        "checkpoints": {"captioner": str(captioner), "translator": str(translator)},
        "images": [name for name, _ in images],
        "repeats": options.repeats,
        "windows": "steady" if options.steady else "burst",
        "baseline": None,
        "runs": [],
    }
    baseline = Baseline(options, captioner, translator) if options.baseline else None
    plan = pass_plan(options.repeats, [label for label, _ in repositories])

    def baseline_passes(gap: int) -> None:
        if baseline is not None:
            baseline.run_passes(images, plan[gap][1], plan[gap][0])
            results["baseline"] = baseline.result()
        bench_report.write_outputs(results, output_dir)  # after each stage: a failure keeps the rest

    for gap, (label, repository) in enumerate(repositories):
        baseline_passes(gap)
        results["runs"].extend(run_repository(label, Path(repository), inputs, options))
    baseline_passes(len(repositories))
    return results


# ------------------------------------------------------------------------------------------ CLI


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
        caption_beams=args.caption_beams,
        caption_tokens=args.caption_tokens,
        translation_beams=args.translation_beams,
        translation_tokens=args.translation_tokens,
        concurrency=args.concurrency,
        component_concurrency=args.component_concurrency,
        requests=args.requests,
        repeats=args.repeats,
        steady=not args.burst,
        repositories=tuple(args.repository),
        output_dir=args.output_dir,
        baseline=not args.no_baseline,
        triton=not args.baseline_only,
        threads=args.threads,
        timeout_s=args.timeout,
    )


def _bench(args: argparse.Namespace) -> int:
    from captioning.bench_report import format_table

    results = run_bench(options_from_args(args))
    print(format_table(results))
    print(f"\nresults: {args.output_dir / 'results.json'}\nplot: {args.output_dir / 'throughput.png'}")
    return 0


def _make_checkpoints(args: argparse.Namespace) -> int:
    from captioning.bench_checkpoints import cached_bench_checkpoints, make_bench_checkpoints

    if args.output is None:
        paths = cached_bench_checkpoints(seed=args.seed)
    else:
        paths = make_bench_checkpoints(args.output, seed=args.seed)
    print(f"captioner: {paths.blip}\ntranslator: {paths.mbart}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from captioning import bench_checkpoints

    defaults = BenchOptions()
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the original one-at-a-time PyTorch pipeline against Triton repositories",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    models = bench.add_argument_group("checkpoints and inputs")
    models.add_argument(
        "--captioner", type=Path, help="BLIP checkpoint dir (default: full-size bench checkpoints)"
    )
    models.add_argument(
        "--translator", type=Path, help="mBART checkpoint dir (default: full-size bench checkpoints)"
    )
    models.add_argument("--images-dir", type=Path, default=defaults.images_dir, help="JPEGs to send")
    models.add_argument("--num-images", type=int, default=defaults.num_images, help="first N images, sorted")
    gen = bench.add_argument_group("generation (fixed output lengths: min = max new tokens)")
    gen.add_argument("--caption-beams", type=int, default=defaults.caption_beams)
    gen.add_argument("--caption-tokens", type=int, default=defaults.caption_tokens, help="new caption tokens")
    gen.add_argument("--translation-beams", type=int, default=defaults.translation_beams)
    gen.add_argument("--translation-tokens", type=int, default=defaults.translation_tokens)
    load = bench.add_argument_group("Triton load")
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
    bench.add_argument(
        "--output-dir", type=Path, default=defaults.output_dir, help="results.json, plot, logs"
    )
    bench.add_argument("--no-baseline", action="store_true", help="skip the in-process PyTorch baseline")
    bench.add_argument("--baseline-only", action="store_true", help="measure the PyTorch baseline alone")
    bench.add_argument("--threads", type=int, default=0, help="baseline torch threads (0: all cores)")
    bench.set_defaults(func=_bench)

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
