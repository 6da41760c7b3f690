"""A closed-loop load of the SDK's own requests, for models perf_analyzer cannot drive.

perf_analyzer treats every model with a sequence batcher (and every ensemble over one) as a stateful model and
sends client sequence ids and START/END flags; Triton 2.51 then refuses to reschedule the requests of an
iterative-sequence model (an in-flight generator), and they hang. So `captioning bench` measures in-flight
repositories with N client threads that each send one request at a time, as the SDK does, and reports the
figures perf_analyzer would.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

from captioning.bench.stats import percentile


def is_iterative(config_text: str) -> bool:
    """Whether a `config.pbtxt` runs its model under iterative sequences (in-flight batching)."""
    return "iterative_sequence: true" in config_text


Send = Callable[[object, int], object]  # (CaptionClient, request number) -> answer


def sender(model: str, images: Sequence[bytes], texts: Sequence[str]) -> Send:
    """One request of `model` as the SDK sends it: an image (both languages or English) or a text."""
    from captioning import contract

    if model == contract.TRANSLATOR_MODEL:
        return lambda client, n: client.translate(texts[n % len(texts)])
    lang = "en" if model == contract.ENGLISH_MODEL else "both"
    return lambda client, n: client.caption(images[n % len(images)], lang=lang)


def closed_loop(url: str, send: Send, concurrency: int, requests: int, timeout_s: float) -> dict:
    """`requests` requests by `concurrency` clients, each sending its next one when the last returns.
    Returns perf_analyzer's keys (throughput in requests/s, latencies in ms)."""
    from captioning.client import CaptionClient

    latencies: list[float] = []
    counter = itertools.count()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client_loop(client: CaptionClient) -> None:
        while True:
            n = next(counter)
            if n >= requests:
                return
            started = time.perf_counter()
            try:
                send(client, n)
            except Exception as exc:  # recorded: a failed window is not a measurement
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - started)

    with CaptionClient(url, timeout_s=timeout_s) as client:
        send(client, 0)  # warm-up outside the window
        threads = [threading.Thread(target=client_loop, args=(client,)) for _ in range(concurrency)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"closed-loop load failed: {errors[0]}") from errors[0]
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "throughput": len(latencies) / elapsed,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "avg_ms": sum(ms) / len(ms),
        "server_queue_ms": float("nan"),
        "server_compute_ms": float("nan"),
        "window": "closed-loop (SDK clients)",
    }
