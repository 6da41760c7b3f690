"""`captioning overload`: open-loop traffic at a multiple of the server's measured capacity.

Clients that arrive at a fixed rate, whatever the server answers, are what overload looks like in production
(a closed loop slows down with the server and never overloads it). First the capacity is measured in a closed
loop (of SDK clients with a long timeout, so that the door admits all of it); then requests arrive at `multiple` times it, each from its own client with its own timeout, and every
outcome is recorded: served, shed (`ServerBusyError`, by how: a full queue, a forecast wait, or a queue
timeout reached late), timed out at the client, or failed otherwise. The guarantee measured
(docs/reliability.md): no request reaches its client's timeout, and a shed request is answered within a second.

`burst` replaces the open loop with N clients that arrive at once, each sending K requests one after another;
`plain_clients` sends with plain tritonclient gRPC (no request timeout) instead of the SDK. Every report gives
the goodput (answers before their client's timeout per second) against the capacity, and the refusal latency.
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

from captioning.bench.overload_modes import (
    SHED,
    TIMEOUT,
    Sender,
    burst,
    goodput,
    outcome_of,  # noqa: F401 - re-exported: the outcome vocabulary
    plain_sender,
    refusals,
    sdk_sender,
)

LOG = logging.getLogger(__name__)
FAST_S = 1.0  # a shed request must be answered within this
BURST_GOODPUT = 0.6  # a burst must be answered at this share of the closed-loop capacity, or better


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
    plain_clients: bool = False  # plain tritonclient gRPC, client_timeout only, in place of the SDK
    burst: int = 0  # clients arriving at once, in place of the open loop (0: open loop)
    requests_per_client: int = 3  # each burst client's requests, one after another


def _inputs(options: OverloadOptions) -> list[bytes | str]:
    from captioning.bench.soak import flickr_inputs

    return [item for kind, item in flickr_inputs(options.inputs, options.inputs) if kind == options.kind]


def sender(options: OverloadOptions) -> Sender:
    """The SDK's requests, or plain tritonclient's."""
    return plain_sender(options.url, options.kind) if options.plain_clients else sdk_sender(options.url)


CAPACITY_TIMEOUT_S = 300.0  # what a capacity client waits, and tells the server it waits


def measure_capacity(options: OverloadOptions, inputs: list, send: Sender) -> float:
    """Served requests per second in a closed loop of `capacity_concurrency` clients, from the start to the
    last answer (the requests sent before the window closed are all waited for).

    The clients send their long timeout with each request whatever `send` the measured traffic uses: plain
    clients send none, and the door would hold a closed loop of them to the server's latency budget, which
    measures the budget, not what the server can do."""
    send = sdk_sender(options.url) if options.plain_clients else send
    served: list[float] = []
    start = time.monotonic()
    stop = start + options.capacity_s

    def loop(offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            if send(inputs[i % len(inputs)], CAPACITY_TIMEOUT_S)[0] == "ok":
                served.append(time.monotonic())
            i += options.capacity_concurrency

    with ThreadPoolExecutor(options.capacity_concurrency) as pool:
        list(pool.map(loop, range(options.capacity_concurrency)))
    return len(served) / (max(served) - start) if served else 0.0


def run_overload(options: OverloadOptions) -> dict:
    send, inputs = sender(options), _inputs(options)  # a URL plain clients cannot use fails first
    send(inputs[0], 300.0)  # warm up
    capacity = options.capacity or measure_capacity(options, inputs, send)
    if capacity <= 0:
        raise RuntimeError(
            f"no request was served in the {options.capacity_s:g} s capacity window: lengthen it "
            "(--capacity-duration) or give the capacity (--capacity)"
        )
    if options.burst:
        LOG.info("capacity %.2f requests/s; a burst of %d clients", capacity, options.burst)
        records, rate = run_burst(options, inputs, send), None
    else:
        rate = options.multiple * capacity
        LOG.info("capacity %.2f requests/s; offering %.2f/s for %.0f s", capacity, rate, options.duration_s)
        records = open_loop(options, inputs, send, rate)
    after = send(inputs[0], 120.0)
    return summarise(records, capacity, rate, after, options)


def open_loop(options: OverloadOptions, inputs: list, send: Sender, rate: float) -> list[tuple]:
    """Requests arriving at `rate` for the duration, whatever the server answers."""
    records: list[tuple[float, str, float]] = []
    lock = threading.Lock()

    def fire(i: int, at: float) -> None:
        outcome, seconds = send(inputs[i % len(inputs)], options.client_timeout_s)
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
    return records


def run_burst(options: OverloadOptions, inputs: list, send: Sender) -> list[tuple]:
    """`burst` clients at once, each sending `requests_per_client` requests in turn, each with the client
    timeout; the clients' inputs differ."""
    per_client = options.requests_per_client

    def one(client: int, n: int) -> tuple[str, float]:
        return send(inputs[(client * per_client + n) % len(inputs)], options.client_timeout_s)

    return burst(one, options.burst, per_client)


def summarise(
    records: list[tuple],
    capacity: float,
    rate: float | None,
    after: tuple[str, float],
    options: OverloadOptions,
) -> dict:
    """The report. `records` are `(t, outcome, seconds)`, burst ones `(t, outcome, seconds, client, n)`;
    `rate` is the open loop's (None for a burst)."""
    by_outcome: dict[str, list[float]] = defaultdict(list)
    for _, outcome, seconds, *_ in records:
        by_outcome[outcome].append(seconds)
    shed = [s for outcome, ss in by_outcome.items() if outcome.startswith(SHED) for s in ss]
    good = goodput(records, options.client_timeout_s)
    mode = {"mode": "burst", "clients": options.burst, "requests_per_client": options.requests_per_client}
    if not options.burst:
        mode = {"mode": "open-loop", "offered_per_s": rate, "duration_s": options.duration_s}
    return {
        "url": options.url,
        "kind": options.kind,
        "sender": "tritonclient" if options.plain_clients else "sdk",
        **mode,
        "capacity_per_s": capacity,
        "client_timeout_s": options.client_timeout_s,
        "requests": len(records),
        "outcomes": {
            outcome: {"count": len(ss), "p50_s": _median(ss), "max_s": max(ss)}
            for outcome, ss in sorted(by_outcome.items())
        },
        "client_timeouts": len(by_outcome.get(TIMEOUT, [])),
        "shed": len(shed),
        "shed_after_1s": sum(1 for s in shed if s >= FAST_S),
        **good,
        "goodput_ratio": good["goodput_per_s"] / capacity,
        **refusals(records),
        "right_after": {"outcome": after[0], "seconds": after[1]},
        "records": [_record(r) for r in sorted(records)],
    }


def _record(record: tuple) -> dict:
    t, outcome, seconds, *where = record
    return {"t": t, "outcome": outcome, "seconds": seconds, **dict(zip(("client", "n"), where, strict=False))}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def met(report: dict) -> bool:
    """The guarantee: nothing reaches the client timeout, nothing fails but by shedding, and sheds are fast."""
    expected = {o for o in report["outcomes"] if o == "ok" or o.startswith(SHED)}
    return (
        report["client_timeouts"] == 0
        and expected == set(report["outcomes"])
        and report["shed_after_1s"] == 0
        and report["right_after"]["outcome"] == "ok"
    )


def burst_met(report: dict) -> bool:
    """A burst's criterion: answered at `BURST_GOODPUT` of the capacity or better, no client reached its
    timeout, and every refusal came within a second."""
    return (
        report["goodput_ratio"] >= BURST_GOODPUT
        and report["client_timeouts"] == 0
        and report["shed_after_1s"] == 0
    )


def criterion_met(report: dict) -> bool:
    """`burst_met` for a burst, `met` for the open loop: what the command's exit status says."""
    return burst_met(report) if report["mode"] == "burst" else met(report)


def _heading(report: dict) -> str:
    where = f"overload {report['url']} ({report['kind']}, {report['sender']} clients)"
    if report["mode"] == "burst":
        return (
            f"{where}: capacity {report['capacity_per_s']:.2f}/s; a burst of {report['clients']} clients x "
            f"{report['requests_per_client']} requests: {report['requests']} requests"
        )
    return (
        f"{where}: capacity {report['capacity_per_s']:.2f}/s, offered {report['offered_per_s']:.2f}/s for "
        f"{report['duration_s']:.0f} s: {report['requests']} requests"
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def format_report(report: dict) -> str:
    lines = [_heading(report)]
    for outcome, o in report["outcomes"].items():
        lines.append(f"  {outcome:32s} {o['count']:6d}   p50 {o['p50_s']:7.3f} s   max {o['max_s']:7.3f} s")
    after = report["right_after"]
    lines.append(
        f"  client timeouts {report['client_timeouts']}; shed after {FAST_S:g} s: {report['shed_after_1s']} of "
        f"{report['shed']}; right after: {after['outcome']} in {after['seconds']:.2f} s"
    )
    lines.append(
        f"  goodput {report['goodput_per_s']:.2f}/s = {report['goodput_ratio']:.2f}x capacity ({report['good']} "
        f"answers in time over {report['span_s']:.1f} s); refusals p95 {_seconds(report['refusal_p95_s'])}, "
        f"max {_seconds(report['refusal_max_s'])}"
    )
    return "\n".join(lines)


def _title(report: dict) -> str:
    good = f"goodput {report['goodput_per_s']:.2f}/s = {report['goodput_ratio']:.2f}x capacity"
    if report["mode"] == "burst":
        return (
            f"burst of {report['clients']} clients x {report['requests_per_client']} requests "
            f"({report['kind']}, {report['sender']}): {good}"
        )
    return (
        f"{report['offered_per_s']:.1f} requests/s offered, {report['offered_per_s'] / report['capacity_per_s']:.1f}x "
        f"the measured capacity ({report['kind']}, {report['sender']}): {good}"
    )


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
    phase = "the burst" if report["mode"] == "burst" else "the open-loop phase"
    ax.set_xlabel(f"sent (s into {phase})")
    ax.set_ylabel("answered after (s)")
    ax.set_title(_title(report), fontsize=9)
    ax.text(
        0.01,
        0.02,
        f"client timeouts {report['client_timeouts']}; refusals p95 {_seconds(report['refusal_p95_s'])}, "
        f"max {_seconds(report['refusal_max_s'])}",
        transform=ax.transAxes,
        fontsize=7,
    )
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=110)
    plt.close(fig)
    return paths
