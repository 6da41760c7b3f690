"""Open-loop load at 6x the measured capacity against a repository (docs/reliability.md): python scripts/overload.py REPO."""

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from captioning.client import CaptionClient
from captioning.server.launcher import ServerOptions, TritonServer

repo = Path(sys.argv[1])
opts = ServerOptions.on_free_ports(repo, log_file=Path("/tmp/overload_server.log"))


def one(url, text, timeout):
    t0 = time.perf_counter()
    try:
        with CaptionClient(url, timeout_s=timeout) as c:
            c.translate(text)
        return "ok", time.perf_counter() - t0
    except Exception as e:
        kind = type(e).__name__
        if kind == "ServerBusyError":  # by how it was shed: a full queue, a forecast wait, or a late timeout
            words = str(e).lower()
            kind += (
                ": late"
                if "timeout expired" in words
                else ": forecast"
                if "exceeds the queue" in words
                else ""
            )
        return kind, time.perf_counter() - t0


with TritonServer(opts) as server:
    url = server.grpc_url
    one(url, "warm up", 120)
    # capacity: closed loop at concurrency 8 for 30 s
    done = []
    stop = time.monotonic() + 30

    def loop(i):
        while time.monotonic() < stop:
            done.append(one(url, f"capacity {i} {len(done)}", 120))

    with ThreadPoolExecutor(8) as p:
        list(p.map(loop, range(8)))
    capacity = sum(1 for k, _ in done if k == "ok") / 30
    rate = 6 * capacity
    print(f"capacity {capacity:.2f} sentences/s; offering {rate:.2f}/s for 60 s", flush=True)
    results = []
    lock = threading.Lock()

    def fire(i):
        r = one(url, f"overload sentence {i}", 30.0)
        with lock:
            results.append(r)

    threads = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 60:
        th = threading.Thread(target=fire, args=(i,))
        th.start()
        threads.append(th)
        i += 1
        time.sleep(1 / rate)
    for th in threads:
        th.join()
    kinds = {}
    for k, s in results:
        kinds.setdefault(k, []).append(s)
    summary = {
        "capacity_per_s": capacity,
        "offered_per_s": rate,
        "requests": len(results),
        "outcomes": {
            k: {"count": len(v), "p50_s": sorted(v)[len(v) // 2], "max_s": max(v)} for k, v in kinds.items()
        },
        "shed_after_1s": sum(1 for k, t in results if k.startswith("ServerBusyError") and t >= 1.0),
    }
    after = one(url, "right after", 60)
    summary["right_after"] = after
    print(json.dumps(summary, indent=2))
