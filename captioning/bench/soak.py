"""`captioning soak`: hours of real traffic at a fixed concurrency, every answer checked, memory watched.

It first sends each input once, alone, and keeps the answers as references; then N clients send images
(`arabic_caption`) and texts (`translator`) in a loop until the duration ends, and every answer must equal its
reference (the server is deterministic). It reports requests, failures by status, wrong answers, latency
percentiles per time window, and the resident memory of every server process (tritonserver and its stubs, read
from /proc) over time, with each process's growth after the warm-up; as JSON and a plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from captioning.bench.memory import memory_kib

LOG = logging.getLogger(__name__)
GROWTH_WINDOW_S = 60.0  # memory growth compares medians over windows of at most this, see _growth


@dataclasses.dataclass(frozen=True)
class SoakOptions:
    url: str
    concurrency: int = 16
    duration_s: float = 600.0
    warmup_s: float = 60.0  # memory growth is measured against the first window after this
    windows: int = 10  # latency percentiles per window
    images: int = 16
    texts: int = 16
    server_pid: int | None = None  # None: the only local process named tritonserver
    memory_every_s: float = 2.0
    output_dir: Path = Path("build/soak")


def server_processes(server_pid: int) -> dict[int, str]:
    """tritonserver and its stub processes, named by model for the stubs."""
    from captioning.server.watchdog import stub_processes

    stubs = {pid: f"stub {model} ({pid})" for pid, model in stub_processes(server_pid).items()}
    return {server_pid: "tritonserver", **stubs}


def find_server_pid() -> int:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p) == "tritonserver"]
    if len(pids) != 1:
        raise RuntimeError(f"found {len(pids)} tritonserver processes; name one with --server-pid")
    return pids[0]


def _comm(entry: Path) -> str:
    try:
        return (entry / "comm").read_text().strip()
    except OSError:
        return ""


class _Memory(threading.Thread):
    def __init__(self, server_pid: int, every_s: float) -> None:
        super().__init__(name="soak-memory", daemon=True)
        self.processes = server_processes(server_pid)
        self.every_s, self.samples, self._halt = every_s, [], threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self._halt.is_set():
            memory = {name: memory_kib(pid) for pid, name in self.processes.items()}
            self.samples.append({
                "t": time.monotonic() - started,
                "rss_kib": {name: m.rss for name, m in memory.items()},
                "shmem_kib": {name: m.shmem for name, m in memory.items()},
                "anon_kib": {name: m.anon for name, m in memory.items()},
            })  # fmt: skip
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def flickr_inputs(images: int, texts: int) -> list[tuple[str, bytes | str]]:
    """("image", JPEG bytes) for the first `images` Flickr8k images, then ("text", its first caption) for up to
    `texts` of them: the real traffic the soak and the overload tool send."""
    from captioning.datasets import default_data_dir, read_captions

    folder = default_data_dir() / "flickr8k"
    paths = sorted((folder / "Images").glob("*.jpg"))[:images]
    captions = read_captions(folder / "captions.txt")
    firsts = [captions[p.name][0] for p in paths if captions.get(p.name)][:texts]
    return [("image", p.read_bytes()) for p in paths] + [("text", t) for t in firsts]


def _call(client, kind: str, item) -> str:
    if kind == "image":
        result = client.caption(item)
        return f"{result.english}\n{result.arabic}"
    return client.translate(item)


def run_soak(options: SoakOptions) -> dict:
    from captioning.client import CaptionClient

    inputs = flickr_inputs(options.images, options.texts)
    pid = options.server_pid or find_server_pid()
    with CaptionClient(options.url, timeout_s=300, wait_ready_s=60) as client:
        references = [_call(client, kind, item) for kind, item in inputs]
        LOG.info(
            "soak: %d references computed; %d clients for %.0f s",
            len(inputs),
            options.concurrency,
            options.duration_s,
        )
        memory = _Memory(pid, options.memory_every_s)
        memory.start()
        started = time.monotonic()
        deadline = started + options.duration_s
        records: list[tuple[float, float, str]] = []
        lock = threading.Lock()

        def worker(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                kind, item = inputs[i % len(inputs)]
                t0 = time.monotonic()
                try:
                    status = "ok" if _call(client, kind, item) == references[i % len(inputs)] else "wrong"
                except Exception as exc:
                    status = type(exc).__name__
                with lock:
                    records.append((t0 - started, time.monotonic() - t0, status))
                i += options.concurrency

        with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
            list(pool.map(worker, range(options.concurrency)))
        memory.stop()
    return summarise(records, memory.samples, options)


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]
        if ordered
        else float("nan")
    )


def summarise(records: list[tuple[float, float, str]], samples: list[dict], options: SoakOptions) -> dict:
    width = options.duration_s / options.windows
    windows = []
    for w in range(options.windows):
        inside = [r for r in records if w * width <= r[0] < (w + 1) * width]
        latencies = [r[1] for r in inside if r[2] == "ok"]
        windows.append({
            "start_s": w * width, "requests": len(inside),
            "p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95), "p99_s": _percentile(latencies, 99),
        })  # fmt: skip
    after = [s for s in samples if s["t"] >= options.warmup_s]
    statuses = Counter(r[2] for r in records)
    return {
        "url": options.url,
        "concurrency": options.concurrency,
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "requests": len(records),
        "statuses": dict(statuses),
        "failed": len(records) - statuses.get("ok", 0),
        "wrong": statuses.get("wrong", 0),
        "windows": windows,
        "memory": samples,
        "memory_growth_after_warmup": _growth(after, _resident),
        "private_growth_after_warmup": _growth(after, _private),
    }


def _resident(sample: dict, name: str) -> int | None:
    return sample["rss_kib"][name]


def _private(sample: dict, name: str) -> int | None:
    """Anonymous memory: what a leak grows (captioning/bench/memory.py)."""
    return sample["anon_kib"][name]


def _growth(samples: list[dict], measure) -> dict[str, float | None]:
    """Each process's growth from its median size over the first window after the warm-up to its median over
    the last window (a fifth of the measured span, at most GROWTH_WINDOW_S): a process's size moves with the
    requests it holds at the instant of a sample (tritonserver's gRPC buffers), and a leak is a trend."""
    if not samples:
        return {}
    span = samples[-1]["t"] - samples[0]["t"]
    window = min(GROWTH_WINDOW_S, span / 5)
    head = [s for s in samples if s["t"] <= samples[0]["t"] + window]
    tail = [s for s in samples if s["t"] >= samples[-1]["t"] - window]
    growth = {}
    for name in samples[0]["rss_kib"]:
        first, last = _median_of(head, measure, name), _median_of(tail, measure, name)
        growth[name] = None if not first or last is None else (last - first) / first
    return growth


def _median_of(samples: list[dict], measure, name: str) -> float | None:
    values = sorted(v for v in (measure(s, name) for s in samples) if v is not None)
    return values[len(values) // 2] if values else None


def write_outputs(report: dict, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "soak.json", "plot": output_dir / "soak.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    starts = [w["start_s"] / 60 for w in report["windows"]]
    for key in ("p50_s", "p95_s", "p99_s"):
        lat.plot(starts, [w[key] for w in report["windows"]], marker="o", label=key[:-2])
    lat.set_ylabel("latency (s)")
    lat.set_title(
        f"soak: {report['requests']} requests at concurrency {report['concurrency']}, {report['failed']} failed"
    )
    lat.legend()
    for name in report["memory"][0]["rss_kib"] if report["memory"] else []:
        xs = [s["t"] / 60 for s in report["memory"]]
        (line,) = mem.plot(xs, [(_resident(s, name) or 0) / 1024 for s in report["memory"]], label=name)
        private = [_private(s, name) for s in report["memory"]]
        if all(p is not None for p in private):
            mem.plot(xs, [p / 1024 for p in private], linestyle="--", color=line.get_color())
    if "warmup_s" in report:
        mem.axvline(report["warmup_s"] / 60, color="grey", linestyle=":", label="growth counted from here")
    mem.set_xlabel("minutes")
    mem.set_ylabel("resident memory (MiB); dashed: private anonymous")
    mem.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=110)
    plt.close(fig)
    return paths


def format_report(report: dict) -> str:
    lines = [
        f"soak {report['url']}: {report['requests']} requests at concurrency {report['concurrency']} "
        f"for {report['duration_s']:.0f} s; statuses {report['statuses']}",
    ]
    for w in report["windows"]:
        lines.append(
            f"  t={w['start_s']:6.0f}s  {w['requests']:5d} req  p50 {w['p50_s']:.2f}  p95 {w['p95_s']:.2f}  p99 {w['p99_s']:.2f}"
        )
    private = report.get("private_growth_after_warmup", {})
    for name, growth in report["memory_growth_after_warmup"].items():
        lines.append(
            f"  memory {name}: resident {_percent(growth)}, private anonymous "
            f"{_percent(private.get(name))} after the warm-up"
        )
    return "\n".join(lines)


def _percent(growth: float | None) -> str:
    return "n/a" if growth is None else f"{growth:+.1%}"
