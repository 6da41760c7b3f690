"""`captioning bench-inflight`: what in-flight batching buys on one decoding stage, measured in process.

The translation stage (half or more of a request's cost) on the torch runner, one checkpoint, one set of inputs
and settings, three rows in one run:

- **batch**: batches of `clients` sentences decoded to their end, the batch-synchronous server's way (and
  batched `generate()`'s);
- **in-flight, cohorts apart**: `clients` closed-loop clients started a step apart, so cohorts of every age are
  in flight at once, as with real arrivals; every cohort its own forward pass per step (what the ONNX step
  graphs do);
- **in-flight, merged**: the same clients and arrivals, every step one forward pass for all cohorts.

Every row's translations are compared with the batch row's (they must be equal: all three are exact), and each
row gives sentences/s, its ratio to the batch row, and latency median and p95. The engine runs without a
Triton server around it, so the rows differ only in how decoding is scheduled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InflightBenchOptions:
    translator: str | None = None  # checkpoint dir or hub id; None: the full-size bench checkpoint
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 0  # torch intra-op threads on a CPU; 0: torch's default
    clients: int = 16
    requests: int = 48
    beams: int = 5
    tokens: int = 24  # new tokens per translation, forced (min = max) as `captioning bench` does
    output_dir: Path = Path("build/bench-inflight")

    def validate(self) -> None:
        if self.clients < 1 or self.requests < self.clients:
            raise ValueError(f"need 1 <= clients <= requests, got {self.clients} and {self.requests}")
        if self.beams < 1 or self.tokens < 1:
            raise ValueError(f"beams and tokens must be positive, got {self.beams} and {self.tokens}")


def _stage(options: InflightBenchOptions):
    from transformers import AutoTokenizer

    from captioning.bench.checkpoints import cached_bench_checkpoints
    from captioning.export.build import translation_settings
    from captioning.runtime.stages import TranslationStage
    from captioning.runtime.tokenization import TextCodec
    from captioning.runtime.torch_runner import TorchOptions, encoder_graph, load_checkpoint, step_decoder

    path = options.translator or str(cached_bench_checkpoints().mbart)
    model = load_checkpoint("mbart", path)
    # Same source as load_checkpoint above: the bench checkpoint built here, unless --translator names another.
    tokenizer = AutoTokenizer.from_pretrained(path, src_lang=contract.SOURCE_LANG)  # nosec B615 # the bench checkpoint dir or the operator's --translator; a benchmark, never served
    settings = translation_settings(model, tokenizer, contract.TARGET_LANG, contract.MAX_LENGTH)
    torch_options = TorchOptions(options.device, options.precision, options.threads or None)
    return TranslationStage(
        encoder_graph(model, torch_options),
        step_decoder("mbart", model, torch_options, settings.max_length),
        settings,
        TextCodec.load(path, src_lang=contract.SOURCE_LANG),
    )


def _texts(count: int) -> list[str]:
    from captioning.bench.soak import flickr_inputs

    texts = [text for kind, text in flickr_inputs(count, count) if kind == "text"]
    return (texts * (count // max(1, len(texts)) + 1))[:count]


def _row(name: str, outputs: list[str], seconds: float, latencies: list[float], **extra) -> dict:
    from captioning.bench.stats import percentile

    return {
        "name": name,
        "sentences": len(outputs),
        "seconds": seconds,
        "sentences_per_s": len(outputs) / seconds,
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": percentile(latencies, 95),
        "outputs": outputs,
        **extra,
    }


def batch_row(stage, texts: list[str], overrides, clients: int) -> dict:
    outputs: list[str] = []
    latencies: list[float] = []
    started = time.perf_counter()
    for first in range(0, len(texts), clients):
        chunk = texts[first : first + clients]
        began = time.perf_counter()
        results = stage.run(chunk, [overrides] * len(chunk))
        latencies += [time.perf_counter() - began] * len(chunk)
        for result in results:
            if isinstance(result, Exception):
                raise result
            outputs.append(result)
        LOG.info("batch: %d of %d sentences", len(outputs), len(texts))
    return _row("batch", outputs, time.perf_counter() - started, latencies)


def inflight_row(stage, texts: list[str], overrides, clients: int, tokens: int, merge: bool) -> dict:
    """`clients` closed-loop clients, client i starting at step i x tokens / clients; each sends its next
    sentence as soon as its last one is answered."""
    from captioning.runtime.inflight import InflightEngine, Limits

    engine = InflightEngine(
        stage.steps, Limits(max_rows=clients, max_queue=0, queue_timeout_s=0), merge=merge
    )
    todo = list(range(len(texts)))
    starts: dict[int, list[int]] = {}
    for client in range(clients):
        starts.setdefault(round(client * tokens / clients), []).append(client)
    sent: dict[int, tuple[int, float]] = {}  # request -> (client, when)
    outputs: dict[int, str] = {}
    latencies: list[float] = []

    def send(client: int) -> None:
        if todo:
            index = todo.pop(0)
            engine.submit(index, *stage.prepared([texts[index]], overrides))
            sent[index] = (client, time.perf_counter())

    started, step = time.perf_counter(), 0
    while len(outputs) < len(texts):
        for client in starts.get(step, []):
            send(client)
        for index, result in engine.step().items():
            if isinstance(result, Exception):
                raise result
            client, when = sent.pop(index)
            outputs[index] = result[0]
            latencies.append(time.perf_counter() - when)
            send(client)
        step += 1
        if step % 10 == 0:
            LOG.info(
                "in flight (merge=%s): step %d, %d of %d sentences", merge, step, len(outputs), len(texts)
            )
    name = "in-flight, merged" if merge else "in-flight, cohorts apart"
    return _row(
        name,
        [outputs[i] for i in range(len(texts))],
        time.perf_counter() - started,
        latencies,
        steps=step,
        cohort_steps=engine.cohort_steps,
        forward_passes=engine.passes,
    )


def run_inflight_bench(options: InflightBenchOptions) -> dict:
    import platform

    from captioning.decoding import Overrides

    options.validate()
    stage = _stage(options)
    texts = _texts(options.requests)
    overrides = Overrides(
        num_beams=options.beams, max_new_tokens=options.tokens, min_new_tokens=options.tokens
    )
    stage.run(texts[:1], [overrides])  # warm-up: first calls allocate
    rows = [batch_row(stage, texts, overrides, options.clients)]
    for merge in (False, True):
        rows.append(inflight_row(stage, texts, overrides, options.clients, options.tokens, merge))
    reference = rows[0]
    for row in rows:
        row["x_batch"] = row["sentences_per_s"] / reference["sentences_per_s"]
        row["equal_to_batch"] = sum(a == b for a, b in zip(row["outputs"], reference["outputs"], strict=True))
    results = {
        "options": {k: str(v) for k, v in dataclasses.asdict(options).items()},
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
        "merged_x_apart": rows[2]["sentences_per_s"] / rows[1]["sentences_per_s"],
    }
    options.output_dir.mkdir(parents=True, exist_ok=True)
    (options.output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    plot(results, options.output_dir / "inflight.png")
    return results


def format_rows(results: dict) -> str:
    lines = [
        f"{'row':<26}{'sentences/s':>12}{'x batch':>9}{'p50 s':>8}{'p95 s':>8}{'passes/steps':>14}{'equal':>8}"
    ]
    for row in results["rows"]:
        passes = f"{row['forward_passes']}/{row['cohort_steps']}" if "forward_passes" in row else ""
        lines.append(
            f"{row['name']:<26}{row['sentences_per_s']:>12.3f}{row['x_batch']:>9.2f}"
            f"{row['latency_p50_s']:>8.1f}{row['latency_p95_s']:>8.1f}{passes:>14}"
            f"{row['equal_to_batch']:>4}/{row['sentences']}"
        )
    lines.append(f"merged over cohorts apart: {results['merged_x_apart']:.2f}x")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [row["name"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.barh(names, [row["sentences_per_s"] for row in rows], color=["#888", "#d62728", "#2ca02c"])
    left.set_xlabel("sentences/s (higher is better)")
    left.invert_yaxis()
    for i, row in enumerate(rows):
        right.plot([row["latency_p50_s"], row["latency_p95_s"]], [i, i], "o-", color="black")
    right.set_yticks(range(len(rows)), names)
    right.invert_yaxis()
    right.set_xlabel("latency p50 - p95, s (lower is better)")
    options = results["options"]
    fig.suptitle(
        f"translation on the torch runner ({options['device']}, {options['precision']}): {options['clients']} "
        f"clients, {options['beams']} beams, {options['tokens']} tokens"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
