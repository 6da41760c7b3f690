"""The peer tables of `captioning bench`: every system on one stage, as ratios within the run, each with its
agreement with `generate()` one request at a time (the tokens exact mode is defined by). The bf16 rows add
a note: their agreement with fp32 on the same batches (precision alone), and the CPU's bf16 flags."""

from __future__ import annotations

from collections.abc import Sequence

from captioning import contract
from captioning.bench.peers import BF16, FP32, PIPELINE, SINGLE, TRANSLATION


def agreement(outputs: Sequence | None, reference: Sequence | None) -> str:
    """`equal/total` against the reference outputs, '-' where either side is missing."""
    if not outputs or not reference or len(outputs) != len(reference):
        return "-"
    same = sum(_key(a) == _key(b) for a, b in zip(outputs, reference, strict=True))
    return f"{same}/{len(reference)}"


def _key(output) -> tuple:
    if isinstance(output, dict):
        return output.get("english"), output.get("arabic")
    return (output,)


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def _peers(results: dict, stage: str) -> list[dict]:
    return [p for p in results.get("peers") or [] if p["stage"] == stage]


def translation_rows(results: dict) -> list[dict]:
    """Sentences/s of every translation system, against `generate()` one at a time."""
    peers = _peers(results, TRANSLATION)
    single = next((p for p in peers if p["name"] == SINGLE and p.get("rate")), None)
    reference_rate = single["rate"]["median"] if single else None
    reference = single["outputs"] if single else None
    rows = [
        {
            "system": p["name"],
            "rate": p.get("rate"),
            "skipped": p.get("skipped"),
            "agreement": agreement(p.get("outputs"), reference),
        }
        for p in peers
    ]
    for run in results["runs"]:
        if run["model"] == contract.TRANSLATOR_MODEL:
            served = (results.get("outputs") or {}).get(run["label"], {}).get("translation")
            rows.append(
                {
                    "system": f"{run['label']} translator, {run['concurrency']} clients",
                    "rate": run["throughput"],
                    "skipped": None,
                    "agreement": agreement(served, reference),
                }
            )
    for row in rows:
        row["ratio"] = _ratio(row["rate"]["median"] if row["rate"] else None, reference_rate)
    return rows


def pipeline_rows(results: dict) -> list[dict]:
    """Images/s of the whole pipeline: the baseline, batched `generate()` and each repository's ensemble."""
    base = results.get("baseline")
    reference = base["outputs"] if base else None
    rows = []
    if base:
        rows.append(_pipeline_row("original pipeline, one at a time", base["images_per_s"], base, reference))
    for p in _peers(results, PIPELINE):
        rows.append(_pipeline_row(p["name"], p.get("rate"), p, reference, p.get("skipped")))
    for run in results["runs"]:
        if run["model"] == contract.ARABIC_MODEL:
            served = (results.get("outputs") or {}).get(run["label"], {}).get("pipeline")
            latency = {"p50_ms": run["p50_ms"]["median"], "p95_ms": run["p95_ms"]["median"]}
            name = f"{run['label']} {run['model']}, {run['concurrency']} clients"
            rows.append(_pipeline_row(name, run["throughput"], latency, reference, outputs=served))
    base_rate = base["images_per_s"]["median"] if base else None
    fp32 = [p["name"] for p in _peers(results, PIPELINE) if p.get("precision", FP32) == FP32]
    batched = next((r for r in rows if r["system"] in fp32 and r["rate"]), None)
    for row in rows:
        rate = row["rate"]["median"] if row["rate"] else None
        row["x_baseline"] = _ratio(rate, base_rate)
        row["x_batched"] = _ratio(rate, batched["rate"]["median"] if batched else None)
    return rows


def _pipeline_row(name, rate, latency, reference, skipped=None, outputs=None) -> dict:
    if outputs is None and isinstance(latency, dict):
        outputs = latency.get("outputs")
    p50, p95 = latency.get("p50_ms"), latency.get("p95_ms")
    return {
        "system": name,
        "rate": rate,
        "skipped": skipped,
        "p50_s": p50 / 1000 if p50 else None,
        "p95_over_p50": f"{p95 / p50:.2f}" if p50 and p95 else "-",
        "agreement": agreement(outputs, reference),
    }


def bf16_notes(results: dict) -> list[str]:
    """Per bf16 row: its agreement with exact mode and with the fp32 peer on the same batches; then what
    the CPU offers for bf16 (native or emulated), once."""
    base = results.get("baseline")
    exact = {PIPELINE: base["outputs"] if base else None}
    single = [p for p in _peers(results, TRANSLATION) if p["name"] == SINGLE]
    exact[TRANSLATION] = single[0].get("outputs") if single else None
    lines, cpu = [], None
    for peer in results.get("peers") or []:
        if peer.get("precision") != BF16:
            continue
        cpu = cpu or peer.get("cpu")
        if peer.get("skipped"):
            lines.append(f"  {peer['name']} ({peer['stage']}): skipped: {peer['skipped']}")
            continue
        twin = peer.get("fp32_peer")
        fp32 = next((p for p in _peers(results, peer["stage"]) if p["name"] == twin), {})
        lines.append(
            f"  {peer['name']} ({peer['stage']}): {agreement(peer.get('outputs'), exact[peer['stage']])} "
            f"equal to exact mode (fp32 generate() one at a time), "
            f"{agreement(peer.get('outputs'), fp32.get('outputs'))} to {fp32.get('name', 'fp32')} in fp32"
        )
    if not lines:
        return []
    flags = ", ".join(cpu["cpu_flags"]) if cpu and cpu.get("cpu_flags") else "none of note"
    header = "bf16 peers (model.to(torch.bfloat16), the fp32 peers' batches):"
    return ["", header, *lines, f"  CPU flags: {flags}; {cpu['note'] if cpu else '-'}"]


def _rate(rate: dict | None) -> str:
    return f"{rate['median']:.3f} [{rate['min']:.3f}-{rate['max']:.3f}]" if rate else "-"


def _table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, tuple("-" * w for w in widths), *body)
    ]


def format_peers(results: dict) -> list[str]:
    """The two peer tables; empty when the run measured no peer."""
    if not results.get("peers"):
        return []
    lines = []
    pipeline = pipeline_rows(results)
    if pipeline:
        lines += ["", "whole pipeline, images/s (agreement: English and Arabic equal to the original's):"]
        lines += _table(
            ("system", "images/s", "p50 s", "p95/p50", "x original", "x batched generate()", "agreement"),
            [
                (
                    r["system"],
                    _rate(r["rate"]) if not r["skipped"] else f"skipped: {r['skipped']}",
                    f"{r['p50_s']:.2f}" if r["p50_s"] else "-",
                    r["p95_over_p50"],
                    r["x_baseline"],
                    r["x_batched"],
                    r["agreement"],
                )
                for r in pipeline
            ],
        )
    lines += ["", f"translation stage, sentences/s (agreement: equal to {SINGLE}):"]
    lines += _table(
        ("system", "sentences/s", f"x {SINGLE}", "agreement"),
        [
            (
                r["system"],
                _rate(r["rate"]) if not r["skipped"] else f"skipped: {r['skipped']}",
                r["ratio"],
                r["agreement"],
            )
            for r in translation_rows(results)
        ],
    )
    return lines + bf16_notes(results)


def plot_translation(ax, results: dict) -> None:
    """Horizontal bars: sentences/s of every translation row, with its ratio."""
    rows = [r for r in translation_rows(results) if r["rate"]]
    names = [r["system"] for r in rows]
    values = [r["rate"]["median"] for r in rows]
    errors = [
        [v - r["rate"]["min"] for v, r in zip(values, rows, strict=True)],
        [r["rate"]["max"] - v for v, r in zip(values, rows, strict=True)],
    ]
    ax.barh(range(len(rows)), values, xerr=errors, color="tab:blue", alpha=0.7)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()
    for i, r in enumerate(rows):  # ratio, and agreement with exact mode where known
        text = r["ratio"] if r["agreement"] == "-" else f"{r['ratio']}, {r['agreement']} exact"
        ax.annotate(text, (r["rate"]["max"], i), xytext=(4, 0), textcoords="offset points", fontsize=7)
    ax.set_xlim(0, max((r["rate"]["max"] for r in rows), default=1.0) * 1.35)  # room for the notes
    ax.set_xlabel("sentences/s (translation alone)")
    ax.set_title(f"translation: x {SINGLE}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
