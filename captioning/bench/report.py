"""Numbers and outputs of `captioning bench`: summaries with spread, Triton's statistics and their per-model
breakdown, the table, results.json and the throughput-vs-latency plot."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from captioning import contract
from captioning.bench.bf16 import cpu_flags, reported_flags
from captioning.bench.comparison import agreement, format_peers, plot_translation
from captioning.bench.peers import BF16, PIPELINE

# ------------------------------------------------------------------------------------------ summaries


def model_statistics(http_url: str) -> dict[str, dict[str, int]]:
    """Cumulative counters per model from Triton's statistics API."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    try:
        raw = client.get_inference_statistics()
    finally:
        client.close()
    stats = {}
    for model in raw.get("model_stats", []):
        infer = model.get("inference_stats", {})

        def part(key: str, field: str, infer=infer) -> int:
            return int(infer.get(key, {}).get(field, 0))

        stats[model["name"]] = {
            "inferences": int(model.get("inference_count", 0)),
            "executions": int(model.get("execution_count", 0)),
            "requests": part("success", "count"),
            "queue_ns": part("queue", "ns"),
            "compute_ns": sum(part(k, "ns") for k in ("compute_input", "compute_infer", "compute_output")),
        }
    return stats


def stats_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    """Counter differences of the models that served requests in between."""
    delta = {}
    for name, counters in after.items():
        old = before.get(name, {})
        diff = {key: value - old.get(key, 0) for key, value in counters.items()}
        if diff.get("requests", 0) > 0:
            delta[name] = diff
    return delta


def add_counters(total: dict, delta: dict) -> None:
    for name, counters in delta.items():
        slot = total.setdefault(name, dict.fromkeys(counters, 0))
        for key, value in counters.items():
            slot[key] += value


def breakdown(counters: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Per model: queue and compute time per request (a request's compute is the whole execution it rode
    in), and the average batch, inferences per execution (BLS calls to unbatched decoders count 1 each)."""
    rows = {}
    for name, d in sorted(counters.items()):
        requests = max(d["requests"], 1)
        rows[name] = {
            "requests": d["requests"],
            "executions": d["executions"],
            "queue_ms": d["queue_ns"] / requests / 1e6,
            "compute_ms": d["compute_ns"] / requests / 1e6,
            "avg_batch": d["inferences"] / d["executions"] if d["executions"] else 0.0,
        }
    return rows


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_flags": reported_flags(cpu_flags()),  # what bf16 and int8 speeds depend on
    }


# ------------------------------------------------------------------------------------------ table


def _ratio(value: float, reference: float | None) -> str:
    if not reference or not value or math.isnan(value):
        return "-"
    return f"{value / reference:.2f}x"


def rows(results: dict) -> list[dict]:
    """One row per measured point, baseline first, with ratios to the baseline."""
    base = results.get("baseline")
    base_rate = base["images_per_s"]["median"] if base else None
    base_p50 = base["p50_ms"] if base else None
    table = []
    if base:
        table.append(
            {
                "label": "baseline",
                "model": "pytorch eager",
                "concurrency": 1,
                "rate": base["images_per_s"],
                "p50": base["p50_ms"],
                "p95": base["p95_ms"],
                "p99": base["p99_ms"],
                "speedup": _ratio(base_rate, base_rate),
                "latency": _ratio(base_p50, base_p50),
            }
        )
    for run in results["runs"]:
        rate = run["throughput"]
        table.append(
            {
                "label": run["label"],
                "model": run["model"],
                "concurrency": run["concurrency"],
                "rate": rate,
                "p50": run["p50_ms"]["median"],
                "p95": run["p95_ms"]["median"],
                "p99": run["p99_ms"]["median"],
                "speedup": _ratio(rate["median"], base_rate),
                "latency": _ratio(run["p50_ms"]["median"], base_p50),
            }
        )
    return table


def _memory(peak: dict) -> str:
    """Per model, the largest instance; then every server process together (what a node must hold)."""
    models = sorted(peak["per_model_mib"].items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {mib / 1024:.1f} GiB" for name, mib in models) + (
        f"; all processes {peak['total_mib'] / 1024:.1f} GiB"
    )


def _rate(rate: dict) -> str:
    return f"{rate['median']:.3f} [{rate['min']:.3f}-{rate['max']:.3f}]"


def format_table(results: dict) -> str:
    s = results["settings"]
    m = results["machine"]
    lines = [
        f"caption: {s['caption_num_beams']} beams, {s['caption_new_tokens']} new tokens | "
        f"translation: {s['translation_num_beams']} beams, {s['translation_new_tokens']} new tokens | "
        f"{len(results['images'])} images, {results['repeats']} repeats of "
        f"{results.get('windows', 'burst')} windows | {m['cores']} cores, {m['cpu']}"
        + (f" ({' '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""),
        "images/s (texts/s for translator): median [min-max] over repeats; latencies in seconds, medians; "
        "ratios against the baseline's images/s and p50",
    ]
    passes = (results.get("baseline") or {}).get("passes", [])
    if passes:
        spread = ", ".join(f"{p['images_per_s']:.3f} ({p['slot']})" for p in passes)
        lines.append(f"baseline passes, interleaved with the Triton runs: {spread}")
    lines.append("")
    header = ("mode", "model", "conc", "images/s", "p50", "p95", "p99", "x baseline", "p50 / baseline")
    body = [
        (
            r["label"],
            r["model"],
            str(r["concurrency"]),
            _rate(r["rate"]),
            f"{r['p50'] / 1000:.2f}",
            f"{r['p95'] / 1000:.2f}",
            f"{r['p99'] / 1000:.2f}",
            r["speedup"],
            r["latency"],
        )
        for r in rows(results)
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *body):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines += ["", "server side per model (queue / compute ms per request, avg batch = inferences/execution):"]
    for run in results["runs"]:
        parts = [
            f"{name} {b['queue_ms']:.1f}/{b['compute_ms']:.1f} b{b['avg_batch']:.1f}"
            for name, b in run["server"].items()
        ]
        lines.append(f"  {run['label']} {run['model']} c={run['concurrency']}: " + "; ".join(parts))
        if run.get("peak_memory"):
            lines.append("    peak resident memory: " + _memory(run["peak_memory"]))
    fallbacks = [
        f"{r['label']} {r['model']} c={r['concurrency']}"
        for r in results["runs"]
        if results.get("windows") == "steady" and any(w.get("window") == "burst" for w in r["windows"])
    ]
    if fallbacks:
        lines += [
            "",
            "no steady state within the window limit, measured as one burst: " + ", ".join(fallbacks),
        ]
    for label, error in (results.get("failed") or {}).items():
        lines += ["", f"{label} FAILED, not measured past this point: {error.splitlines()[0]}"]
    lines += format_peers(results)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ files


def plot(results: dict, path: Path) -> Path:
    """Throughput against p50 latency: one line per repository over its arabic_caption concurrencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [p for p in results.get("peers") or [] if p.get("rate")]
    if peers:
        fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
        plot_translation(side, results)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({run["label"] for run in results["runs"]})
    for label in labels:
        points = sorted(
            (r for r in results["runs"] if r["label"] == label and r["model"] == contract.ARABIC_MODEL),
            key=lambda r: r["concurrency"],
        )
        xs = [r["p50_ms"]["median"] / 1000 for r in points]
        ys = [r["throughput"]["median"] for r in points]
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(
                f"c={r['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    base = results.get("baseline")
    if base:
        ax.plot(
            [base["p50_ms"] / 1000], [base["images_per_s"]["median"]], "k*", markersize=12, label="baseline"
        )
    for peer in peers:  # bf16 apart from fp32, each with its agreement with the original (exact mode)
        if peer["stage"] == PIPELINE:
            same = agreement(peer.get("outputs"), base["outputs"] if base else None)
            label = peer["name"] if same == "-" else f"{peer['name']} ({same} exact)"
            marker = "ms" if peer.get("precision") == BF16 else "kD"
            ax.plot([peer["p50_ms"] / 1000], [peer["rate"]["median"]], marker, markersize=8, label=label)
    s = results["settings"]
    ax.set_title(
        f"arabic_caption: caption {s['caption_num_beams']} beams/{s['caption_new_tokens']} tok, "
        f"translation {s['translation_num_beams']} beams/{s['translation_new_tokens']} tok",
        fontsize=9,
    )
    ax.set_xlabel("p50 latency (s)")
    ax.set_ylabel("images/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results: dict, output_dir: Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / "results.json",
        "plot": output_dir / "throughput.png",
        "table": output_dir / "table.txt",
    }
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plot(results, paths["plot"])
    paths["table"].write_text(format_table(results) + "\n")
    return paths
