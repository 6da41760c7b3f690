"""`captioning bench`: the original app's one-request-at-a-time PyTorch pipeline against Triton, in one run.

Both sides use the same checkpoints, images and generation settings (beams, and min = max new tokens so
random weights cost what trained ones do). The baseline runs in this process exactly as the notebook
served it; each Triton repository is served on free ports and loaded by `perf_analyzer` with real JPEG
bytes, while Triton's statistics API gives the per-model queue/compute breakdown of every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from captioning import contract
from captioning.bench.options import BenchOptions

if TYPE_CHECKING:
    from captioning.bench.perf_analyzer import PerfRun

LOG = logging.getLogger(__name__)

PIPELINE = contract.ARABIC_MODEL
COMPONENTS = (
    (contract.ENGLISH_MODEL, contract.IMAGE_INPUT),
    (contract.TRANSLATOR_MODEL, contract.TEXT_INPUT),
)


# ------------------------------------------------------------------------------------------ inputs


def load_images(options: BenchOptions) -> list[tuple[str, bytes]]:
    paths = sorted(Path(options.images_dir).glob("*.jpg"))[: options.num_images]
    if not paths:
        raise FileNotFoundError(f"no .jpg images in {options.images_dir}")
    return [(p.name, p.read_bytes()) for p in paths]


def caption_texts(options: BenchOptions) -> list[str]:
    """Real Flickr8k captions (the first of each of the first `num_texts` images) as the translation stage's
    input: the translator, the translation peers and the `translator` runs all get these."""
    from captioning.datasets import read_captions

    names = [p.name for p in sorted(Path(options.images_dir).glob("*.jpg"))[: options.num_texts]]
    captions = read_captions(Path(options.images_dir).parent / "captions.txt")
    texts = [captions[n][0] for n in names if captions.get(n)]
    return texts or [first for first, *_ in list(captions.values())[: options.num_texts]]


def resolve_checkpoints(options: BenchOptions) -> tuple[Path, Path]:
    if options.captioner is not None and options.translator is not None:
        return Path(options.captioner), Path(options.translator)
    from captioning.bench.checkpoints import cached_bench_checkpoints

    paths = cached_bench_checkpoints()
    return paths.blip, paths.mbart


# ------------------------------------------------------------------------------------------ triton runs


def _one_measurement(run: PerfRun, workdir: Path) -> dict:
    """A steady-state measurement that never settles falls back to one burst (recorded), so a long bench
    run is not lost to one noisy row."""
    from captioning.bench.perf_analyzer import PerfAnalyzerError, run_perf_analyzer

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


def measure(
    server,
    model: str,
    data: Path,
    concurrency: int,
    options: BenchOptions,
    workdir: Path,
    send=None,
) -> dict:
    """`repeats` perf_analyzer windows of one model at one concurrency, with the server stats around each
    (with `send`: SDK clients instead of perf_analyzer, see captioning/bench/closed_loop.py)."""
    from captioning.bench.closed_loop import closed_loop
    from captioning.bench.memory import PeakMemory
    from captioning.bench.perf_analyzer import PerfRun
    from captioning.bench.report import add_counters, breakdown, model_statistics, stats_delta
    from captioning.bench.stats import summary

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
    with PeakMemory(server.process.pid) as memory:
        for _ in range(options.repeats):
            before = model_statistics(server.http_url)
            if send is not None:
                window = closed_loop(server.grpc_url, send, concurrency, run.requests, options.timeout_s)
            else:
                window = _one_measurement(run, workdir)
            windows.append(window)
            add_counters(totals, stats_delta(before, model_statistics(server.http_url)))
    result = {"model": model, "concurrency": concurrency, "requests": run.requests, "windows": windows}
    result["peak_memory"] = memory.result()
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


def served_outputs(server, images: list[tuple[str, bytes]], texts: list[str], timeout_s: float) -> dict:
    """What the repository answers for the bench's inputs, once, for its agreement with `generate()`."""
    from captioning.client import CaptionClient

    with CaptionClient(server.grpc_url, timeout_s=timeout_s) as client:
        captions = client.caption_batch([data for _, data in images])
        translations = client.translate(texts)
    return {
        "pipeline": [{"english": c.english, "arabic": c.arabic} for c in captions],
        "translation": translations,
    }


def run_repository(
    label: str, repository: Path, inputs: dict[str, Path], options: BenchOptions, served: dict
) -> list:
    """The perf_analyzer runs of one repository; its answers for the inputs go into `served["outputs"]`."""
    from captioning.bench.closed_loop import closed_loop, is_iterative, sender
    from captioning.bench.perf_analyzer import PerfRun, run_perf_analyzer
    from captioning.server.launcher import ServerOptions, TritonServer

    workdir = Path(options.output_dir) / "perf" / label
    workdir.mkdir(parents=True, exist_ok=True)
    if any("default_queue_policy" in p.read_text() for p in repository.glob("*/config.pbtxt")):
        LOG.warning(
            "%s sheds load (queue policy): requests the load generator keeps waiting may be answered "
            "UNAVAILABLE and fail the run; export bench repositories with --max-queue-size 0 --queue-timeout 0",
            label,
        )
    server_options = ServerOptions.on_free_ports(
        repository,
        log_file=workdir / "tritonserver.log",
        ready_timeout_s=900.0,  # full-size graphs load slowly on a busy 2-core machine
    )
    runs = []
    # perf_analyzer cannot drive in-flight repositories (closed_loop.py): the SDK's clients do
    inflight = any(
        is_iterative((repository / name / "config.pbtxt").read_text())
        for name in (contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL)
    )
    images = [data for _, data in served["images"]]
    with TritonServer(server_options) as server:
        LOG.info("%s: warming up %s", label, PIPELINE)
        # At the highest concurrency, so batch shapes the windows will see are allocated before them.
        top = max(options.concurrency)
        if inflight:
            closed_loop(server.grpc_url, sender(PIPELINE, images, []), top, top, options.timeout_s)
        else:
            warm = PerfRun(
                PIPELINE,
                server.grpc_url,
                inputs["image"],
                top,
                top,
                timeout_s=options.timeout_s,
                steady=False,
            )
            run_perf_analyzer(warm, workdir)
        plan = [(PIPELINE, "image", c) for c in options.concurrency]
        plan += [(model, kind, options.side_concurrency) for model, kind in COMPONENTS]
        for model, kind, concurrency in plan:
            send = sender(model, images, served["texts"]) if inflight else None
            measured = measure(server, model, inputs[kind], concurrency, options, workdir, send)
            runs.append({"label": label, **measured, "load": "sdk" if inflight else "perf_analyzer"})
        served["outputs"] = served_outputs(server, served["images"], served["texts"], options.timeout_s)
    return runs


def default_repository(options: BenchOptions, captioner: Path, translator: Path) -> Path:
    """Export once per checkpoints and settings; later runs reuse it."""
    from captioning.decoding.settings import Overrides
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    key = hashlib.sha256(f"{captioner.resolve()}|{translator.resolve()}|{options.settings()}".encode())
    output = Path(options.output_dir) / f"repository-{key.hexdigest()[:12]}"
    if (output / "manifest.json").is_file():
        LOG.info("reusing model repository %s", output)
        return output
    build = BuildOptions(
        progress=False,
        # No load shedding: perf_analyzer keeps every client's request in flight, so a queue timeout would
        # shed the measurement itself (a full-size CPU repository holds 16 clients' requests for minutes).
        repository=RepositoryOptions(max_queue_size=0, queue_timeout_s=0),
        caption=Overrides(options.caption_num_beams, options.caption_tokens, options.caption_tokens),
        translation=Overrides(
            options.translation_num_beams, options.translation_tokens, options.translation_tokens
        ),
    )
    LOG.info("exporting a model repository to %s", output)
    return build_repository(captioner, translator, output, build)


def _new_results(options: BenchOptions, captioner: Path, translator: Path, images, texts) -> dict:
    from captioning.bench import report as bench_report

    return {
        "settings": options.settings(),
        "machine": bench_report.machine(),
        "checkpoints": {"captioner": str(captioner), "translator": str(translator)},
        "images": [name for name, _ in images],
        "repeats": options.repeats,
        "windows": "steady" if options.steady else "burst",
        "texts": texts,
        "baseline": None,
        "peers": [],
        "runs": [],
        "outputs": {},  # per repository: its answers for the images and texts (agreement with generate())
    }


def _write_inputs(output_dir: Path, images: list, texts: list[str]) -> dict[str, Path]:
    """perf_analyzer's input files, written once and shared by every repository."""
    from captioning.bench.perf_analyzer import bytes_input_data, text_input_data, write_input_data

    return {
        "image": write_input_data(
            output_dir / "input-images.json", bytes_input_data("image", [d for _, d in images])
        ),
        "text": write_input_data(output_dir / "input-texts.json", text_input_data("text", texts)),
    }


def _measure_repository(
    results: dict, label: str, repository: Path, inputs: dict, options: BenchOptions, images: list
) -> None:
    """One repository's runs into `results`; one that fails (a stub killed, no steady state) is recorded under
    `failed` and must not cost the others."""
    served = {"images": images, "texts": results["texts"]}
    try:
        results["runs"].extend(run_repository(label, repository, inputs, options, served))
        results["outputs"][label] = served["outputs"]
    except Exception as exc:
        LOG.error("%s failed, measuring the next repository: %s: %s", label, type(exc).__name__, exc)
        results.setdefault("failed", {})[label] = f"{type(exc).__name__}: {exc}"[:2000]


def run_bench(options: BenchOptions) -> dict:
    from captioning.bench import report as bench_report
    from captioning.bench.baseline import Baseline, original_pipeline, pass_plan, release_memory
    from captioning.bench.perf_analyzer import require_perf_analyzer

    options.validate()
    repositories = list(options.repositories) if options.triton else []
    if options.triton:
        require_perf_analyzer()  # fail before the long baseline, not after
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    captioner, translator = resolve_checkpoints(options)
    images = load_images(options)
    texts = caption_texts(options)
    inputs = _write_inputs(output_dir, images, texts)
    if options.triton and not repositories:
        repositories = [("triton", default_repository(options, captioner, translator))]
    results = _new_results(options, captioner, translator, images, texts)
    pipeline = original_pipeline(options, captioner, translator) if options.in_process else None
    baseline = Baseline(options, pipeline) if options.baseline else None
    peers = None
    if options.peers:
        from captioning.bench.peers import Peers, kept_ids_of

        peers = Peers(options, pipeline, translator, kept_ids_of(repositories))
    plan = pass_plan(options.repeats, [label for label, _ in repositories])

    def in_process_passes(gap: int) -> None:
        nonlocal pipeline
        slot, count = plan[gap]
        if pipeline is None and options.in_process:
            pipeline = original_pipeline(options, captioner, translator)
        for user in (baseline, peers):
            if user is not None:
                user.pipeline = pipeline
        if baseline is not None:
            baseline.run_passes(images, count, slot)
            results["baseline"] = baseline.result()
        if peers is not None:
            peers.run_passes(images, texts, count, slot)
            results["peers"] = peers.result()
        bench_report.write_outputs(results, output_dir)  # after each stage: a failure keeps the rest
        # The served repository runs next: the in-process models (and what their batches allocated) give it
        # their memory; a full-size exact repository at concurrency 16 needs about 21 GB.
        pipeline = None
        for user in (baseline, peers):
            if user is not None:
                user.pipeline = None
        release_memory()

    for gap, (label, repository) in enumerate(repositories):
        in_process_passes(gap)
        _measure_repository(results, label, Path(repository), inputs, options, images)
    in_process_passes(len(repositories))
    if repositories and len(results.get("failed", {})) == len(repositories):
        raise RuntimeError(f"every repository failed: {results['failed']}")
    return results


# ------------------------------------------------------------------------------------------ CLI
