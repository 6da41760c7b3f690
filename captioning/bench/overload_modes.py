"""What `captioning overload` sends and how it counts: the senders (the SDK, or plain tritonclient gRPC as
perf_analyzer and plain tritonclient users send), the outcome vocabulary both share, the burst schedule, and
the goodput and refusal arithmetic over the records (docs/reliability.md#overload).

A record is `(t, outcome, seconds, ...)`: when the request was sent (seconds from the phase's start), what came
back (`outcome_of`), and after how long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from captioning import contract
from captioning.bench.stats import percentile

Item = bytes | str  # an image (to arabic_caption) or an English text (to translator)
Sender = Callable[[Item, float], tuple[str, float]]  # (item, client timeout) -> (outcome, seconds)
SHED = "ServerBusyError"  # every shed outcome's name starts with this
TIMEOUT = "CaptionTimeoutError"  # the client's timeout was reached


def outcome_of(exc: BaseException) -> str:
    """The outcome's name: the SDK's error type, and for a shed request how it was shed."""
    kind = type(exc).__name__
    if kind != SHED:
        return kind
    words = str(exc).lower()
    if "in the pipeline" in words:
        return f"{SHED}: door"  # refused on arrival for the whole pipeline (captioning/runtime/door.py)
    if "timeout expired" in words:
        return f"{SHED}: queue timeout"  # waited in a queue until its time was up
    if "forecast" in words:
        return f"{SHED}: forecast"  # refused on arrival, from the predicted wait
    return f"{SHED}: queue full"


def plain_outcome_of(exc: BaseException) -> str:
    """A plain tritonclient error under the SDK's names, mapped as the SDK maps it: UNAVAILABLE with Triton's
    shedding words is a shed request, DEADLINE_EXCEEDED the client timeout, the rest by status."""
    from captioning.client.errors import map_exception

    return outcome_of(map_exception(exc) or exc)


def sdk_sender(url: str) -> Sender:
    """One request through `CaptionClient`, which sends its timeout with the request."""

    def send(item: Item, timeout_s: float) -> tuple[str, float]:
        from captioning.client import CaptionClient

        started = time.perf_counter()
        try:
            with CaptionClient(url, timeout_s=timeout_s) as client:
                client.caption(item) if isinstance(item, bytes) else client.translate(item)
            return "ok", time.perf_counter() - started
        except Exception as exc:  # every outcome is data here
            return outcome_of(exc), time.perf_counter() - started

    return send


def plain_address(url: str) -> str:
    """host:port for tritonclient's plain gRPC client; refuses URLs that mean HTTP or TLS."""
    from captioning.client import parse_endpoint

    endpoint = parse_endpoint(url)
    if endpoint.protocol != "grpc" or getattr(endpoint, "tls", False):
        raise ValueError(f"--plain-clients sends plain gRPC: give a gRPC address (host:port), not {url!r}")
    return endpoint.address


def plain_sender(url: str, kind: str) -> Sender:
    """One request through `tritonclient.grpc` with only `client_timeout`: no request `timeout` parameter,
    so the server's queue does not know when the client gives up."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    address = plain_address(url)
    model, name = plain_target(kind)

    def send(item: Item, timeout_s: float) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            data = item.encode("utf-8") if isinstance(item, str) else item
            tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            with grpcclient.InferenceServerClient(address) as client:
                client.infer(model, [tensor], client_timeout=timeout_s)
            return "ok", time.perf_counter() - started
        except Exception as exc:  # every outcome is data here
            return plain_outcome_of(exc), time.perf_counter() - started

    return send


def plain_target(kind: str) -> tuple[str, str]:
    """(model, input) a plain client sends a kind of request to."""
    if kind == "text":
        return contract.TRANSLATOR_MODEL, contract.TEXT_INPUT
    if kind == "image":
        return contract.ARABIC_MODEL, contract.IMAGE_INPUT
    raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")


def burst(
    send: Callable[[int, int], tuple[str, float]], clients: int, per_client: int
) -> list[tuple[float, str, float, int, int]]:
    """`clients` clients released together, each sending `per_client` requests one after another (the next
    when the last is answered): a burst of users arriving at once. `send(client, n)` sends one request.
    Records are `(t, outcome, seconds, client, n)`, `t` from the release."""
    if clients < 1 or per_client < 1:
        raise ValueError(f"a burst needs clients and requests per client >= 1, got {clients} x {per_client}")
    records: list[tuple[float, str, float, int, int]] = []
    lock = threading.Lock()
    zero = [0.0]
    release = threading.Barrier(clients, action=lambda: zero.__setitem__(0, time.perf_counter()))

    def client(c: int) -> None:
        release.wait()
        for n in range(per_client):
            at = time.perf_counter() - zero[0]
            outcome, seconds = send(c, n)
            with lock:
                records.append((at, outcome, seconds, c, n))

    threads = [threading.Thread(target=client, args=(c,), name=f"burst-{c}") for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(records)


def goodput(records: Sequence[tuple], client_timeout_s: float) -> dict:
    """Answers that arrived before their client's timeout, per second from the first request to the end of
    the last one (its answer, refusal or client timeout)."""
    if not records:
        return {"good": 0, "span_s": 0.0, "goodput_per_s": 0.0}
    first = min(r[0] for r in records)
    last = max(r[0] + r[2] for r in records)
    good = sum(1 for r in records if r[1] == "ok" and r[2] < client_timeout_s)
    span = last - first
    return {"good": good, "span_s": span, "goodput_per_s": good / span if span > 0 else 0.0}


def refusals(records: Sequence[tuple]) -> dict:
    """How long shed requests waited for their answer: p95 and max (None when none was shed)."""
    seconds = [r[2] for r in records if r[1].startswith(SHED)]
    if not seconds:
        return {"refusal_p95_s": None, "refusal_max_s": None}
    return {"refusal_p95_s": percentile(seconds, 95), "refusal_max_s": max(seconds)}
