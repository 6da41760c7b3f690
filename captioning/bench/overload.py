"""`captioning overload`: open-loop traffic at a multiple of the server's measured capacity.

Clients that arrive at a fixed rate, whatever the server answers, are what overload looks like in production
(a closed loop slows down with the server and never overloads it). First the capacity is measured in a closed
loop; then requests arrive at `multiple` times it, each from its own client with its own timeout, and every
outcome is recorded: served, shed (`ServerBusyError`, by how: a full queue, a forecast wait, or a queue
timeout reached late), timed out at the client, or failed otherwise. The guarantee measured
(docs/reliability.md): no request reaches its client's timeout, and a shed request is answered within a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOG = logging.getLogger(__name__)
FAST_S = 1.0  # a shed request must be answered within this


@dataclasses.dataclass(frozen=True)
class OverloadOptions:
    url: str
    kind: str = "text"  # "text": the translator; "image": the arabic_caption ensemble
    multiple: float = 6.0  # offered rate over the measured capacity
    duration_s: float = 60.0  # of the open-loop phase
    capacity: float | None = None  # requests/s; None: measured first
    capacity_s: float = 30.0  # closed-loop measurement
    capacity_concurrency: int = 8
    client_timeout_s: float = 30.0
    inputs: int = 16  # distinct images or texts, cycled


def outcome_of(exc: BaseException) -> str:
    """The outcome's name: the SDK's error type, and for a shed request how it was shed."""
    kind = type(exc).__name__
    if kind != "ServerBusyError":
        return kind
    words = str(exc).lower()
    if "timeout expired" in words:
        return "ServerBusyError: queue timeout"  # waited in a queue until its time was up
    if "forecast" in words:
        return "ServerBusyError: forecast"  # refused on arrival, from the predicted wait
    return "ServerBusyError: queue full"


def _inputs(options: OverloadOptions) -> list[bytes | str]:
    from captioning.bench.soak import flickr_inputs

    return [item for kind, item in flickr_inputs(options.inputs, options.inputs) if kind == options.kind]


def _one(options: OverloadOptions, item: bytes | str, timeout_s: float) -> tuple[str, float]:
    from captioning.client import CaptionClient

    started = time.perf_counter()
    try:
        with CaptionClient(options.url, timeout_s=timeout_s) as client:
            client.caption(item) if isinstance(item, bytes) else client.translate(item)
        return "ok", time.perf_counter() - started
    except Exception as exc:  # every outcome is data here
        return outcome_of(exc), time.perf_counter() - started


def measure_capacity(options: OverloadOptions, inputs: list) -> float:
    """Served requests per second in a closed loop of `capacity_concurrency` clients."""
    served, stop = [], time.monotonic() + options.capacity_s

    def loop(offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            if _one(options, inputs[i % len(inputs)], max(options.client_timeout_s, 120.0))[0] == "ok":
                served.append(1)
            i += options.capacity_concurrency

    with ThreadPoolExecutor(options.capacity_concurrency) as pool:
        list(pool.map(loop, range(options.capacity_concurrency)))
    return len(served) / options.capacity_s


def run_overload(options: OverloadOptions) -> dict:
    inputs = _inputs(options)
    _one(options, inputs[0], 300.0)  # warm up
    capacity = options.capacity or measure_capacity(options, inputs)
    if capacity <= 0:
        raise RuntimeError(
            f"no request was served in the {options.capacity_s:g} s capacity window: lengthen it "
            "(--capacity-duration) or give the capacity (--capacity)"
        )
    rate = options.multiple * capacity
    LOG.info("capacity %.2f requests/s; offering %.2f/s for %.0f s", capacity, rate, options.duration_s)
    records: list[tuple[float, str, float]] = []
    lock = threading.Lock()

    def fire(i: int, at: float) -> None:
        outcome, seconds = _one(options, inputs[i % len(inputs)], options.client_timeout_s)
        with lock:
            records.append((at, outcome, seconds))

    # Enough workers that no request waits for one: each holds a worker for at most its client timeout.
    workers = int(rate * (options.client_timeout_s + 5)) + 1
    with ThreadPoolExecutor(workers) as pool:
        started = time.monotonic()
        i = 0
        while (at := time.monotonic() - started) < options.duration_s:
            pool.submit(fire, i, at)
            i += 1
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
    after = _one(options, inputs[0], 120.0)
    return summarise(records, capacity, rate, after, options)


def summarise(
    records: list[tuple[float, str, float]],
    capacity: float,
    rate: float,
    after: tuple[str, float],
    options: OverloadOptions,
) -> dict:
    by_outcome: dict[str, list[float]] = defaultdict(list)
    for _, outcome, seconds in records:
        by_outcome[outcome].append(seconds)
    shed = [s for outcome, ss in by_outcome.items() if outcome.startswith("ServerBusyError") for s in ss]
    return {
        "url": options.url,
        "kind": options.kind,
        "capacity_per_s": capacity,
        "offered_per_s": rate,
        "duration_s": options.duration_s,
        "client_timeout_s": options.client_timeout_s,
        "requests": len(records),
        "outcomes": {
            outcome: {"count": len(ss), "p50_s": _median(ss), "max_s": max(ss)}
            for outcome, ss in sorted(by_outcome.items())
        },
        "client_timeouts": len(by_outcome.get("CaptionTimeoutError", [])),
        "shed": len(shed),
        "shed_after_1s": sum(1 for s in shed if s >= FAST_S),
        "right_after": {"outcome": after[0], "seconds": after[1]},
        "records": [{"t": t, "outcome": o, "seconds": s} for t, o, s in sorted(records)],
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def met(report: dict) -> bool:
    """The guarantee: nothing reaches the client timeout, nothing fails but by shedding, and sheds are fast."""
    expected = {o for o in report["outcomes"] if o == "ok" or o.startswith("ServerBusyError")}
    return (
        report["client_timeouts"] == 0
        and expected == set(report["outcomes"])
        and report["shed_after_1s"] == 0
        and report["right_after"]["outcome"] == "ok"
    )


def format_report(report: dict) -> str:
    lines = [
        f"overload {report['url']} ({report['kind']}): capacity {report['capacity_per_s']:.2f}/s, offered "
        f"{report['offered_per_s']:.2f}/s for {report['duration_s']:.0f} s: {report['requests']} requests",
    ]
    for outcome, o in report["outcomes"].items():
        lines.append(f"  {outcome:32s} {o['count']:6d}   p50 {o['p50_s']:7.3f} s   max {o['max_s']:7.3f} s")
    after = report["right_after"]
    lines.append(
        f"  client timeouts {report['client_timeouts']}; shed after {FAST_S:g} s: {report['shed_after_1s']} of "
        f"{report['shed']}; right after: {after['outcome']} in {after['seconds']:.2f} s"
    )
    return "\n".join(lines)


def write_outputs(report: dict, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "overload.json", "plot": output_dir / "overload.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for outcome in report["outcomes"]:
        points = [(r["t"], r["seconds"]) for r in report["records"] if r["outcome"] == outcome]
        ax.scatter(*zip(*points, strict=True), s=6, label=f"{outcome} ({len(points)})")
    ax.axhline(report["client_timeout_s"], color="red", linestyle=":", label="client timeout")
    ax.axhline(FAST_S, color="grey", linestyle=":", label=f"{FAST_S:g} s")
    ax.set_yscale("log")
    ax.set_xlabel("arrival (s into the open-loop phase)")
    ax.set_ylabel("answered after (s)")
    ax.set_title(
        f"{report['offered_per_s']:.1f} requests/s offered, {report['offered_per_s'] / report['capacity_per_s']:.1f}x "
        f"the measured capacity ({report['kind']})"
    )
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=110)
    plt.close(fig)
    return paths
