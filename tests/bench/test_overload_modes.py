"""`captioning overload`'s plain tritonclient sender, burst schedule and goodput, without a server."""

from __future__ import annotations

import argparse
import json
import threading
import time

import pytest
from tritonclient.utils import InferenceServerException

from captioning import contract
from captioning.bench import overload, overload_modes, traffic_commands
from captioning.bench.overload import (
    OverloadOptions,
    burst_met,
    criterion_met,
    format_report,
    met,
    summarise,
)
from captioning.bench.overload_modes import (
    burst,
    goodput,
    outcome_of,
    plain_address,
    plain_outcome_of,
    refusals,
)
from captioning.client import ServerBusyError

QUEUE_FULL = "[StatusCode.UNAVAILABLE] Exceeds maximum queue size"
FORECAST = "Exceeds the queue timeout: would wait about 9.0 s (forecast from the steps)"


@pytest.mark.parametrize(
    ("message", "status", "outcome"),
    [
        (QUEUE_FULL, "StatusCode.UNAVAILABLE", "ServerBusyError: queue full"),
        ("Request timeout expired", "StatusCode.UNAVAILABLE", "ServerBusyError: queue timeout"),
        (FORECAST, "StatusCode.UNAVAILABLE", "ServerBusyError: forecast"),
        ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", "CaptionTimeoutError"),
        ("failed to connect to all addresses", "StatusCode.UNAVAILABLE", "ServerUnreachableError"),
        ("text is empty", "StatusCode.INVALID_ARGUMENT", "InvalidInputError"),
        ("Request for unknown model: 'translator'", "StatusCode.NOT_FOUND", "ModelNotReadyError"),
        ("Stub process is not healthy", "StatusCode.INTERNAL", "CaptionError"),
    ],
)
def test_tritonclient_errors_take_the_sdks_outcome_names(message, status, outcome) -> None:
    assert plain_outcome_of(InferenceServerException(message, status=status)) == outcome


@pytest.mark.parametrize("message", [QUEUE_FULL, "Request timeout expired", FORECAST])
def test_one_vocabulary_for_shed_requests_on_both_paths(message) -> None:
    sdk = outcome_of(ServerBusyError(f"localhost:8001 is overloaded and shed the request: {message}"))
    assert plain_outcome_of(InferenceServerException(message, status="StatusCode.UNAVAILABLE")) == sdk


def test_an_error_outside_tritonclient_is_named_as_the_sdk_would() -> None:
    assert plain_outcome_of(TimeoutError()) == "CaptionTimeoutError"
    assert plain_outcome_of(ConnectionRefusedError("refused")) == "ServerUnreachableError"
    assert plain_outcome_of(KeyError("x")) == "KeyError"


def test_plain_clients_speak_plain_grpc_only() -> None:
    assert plain_address("localhost:8001") == "localhost:8001"
    assert plain_address("grpc://10.0.0.2:9001") == "10.0.0.2:9001"
    for url in ("http://localhost:8000", "localhost:8000", "grpcs://triton:8001"):
        with pytest.raises(ValueError, match="plain gRPC"):
            plain_address(url)


class _FakeTriton:
    """tritonclient.grpc.InferenceServerClient's shape: records each infer call, or raises `error`."""

    calls: list[dict] = []
    error: Exception | None = None

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def infer(self, model, inputs, **kwargs):
        self.calls.append({"url": self.url, "model": model, "inputs": inputs, **kwargs})
        if self.error is not None:
            raise self.error
        return object()


@pytest.mark.parametrize(
    ("kind", "item", "model", "name"),
    [
        ("text", "a dog runs", contract.TRANSLATOR_MODEL, contract.TEXT_INPUT),
        ("image", b"\x89PNG...", contract.ARABIC_MODEL, contract.IMAGE_INPUT),
    ],
)
def test_a_plain_request_carries_no_request_timeout(monkeypatch, kind, item, model, name) -> None:
    import tritonclient.grpc as grpcclient

    monkeypatch.setattr(grpcclient, "InferenceServerClient", _FakeTriton)
    monkeypatch.setattr(_FakeTriton, "calls", [])
    monkeypatch.setattr(_FakeTriton, "error", None)
    send = overload_modes.plain_sender("grpc://localhost:8001", kind)
    assert send(item, 7.5)[0] == "ok"
    (call,) = _FakeTriton.calls
    assert call["url"] == "localhost:8001" and call["model"] == model
    assert call["client_timeout"] == 7.5
    assert "timeout" not in call and not call.get("parameters")  # as perf_analyzer sends it
    (tensor,) = call["inputs"]
    assert (tensor.name(), tensor.shape(), tensor.datatype()) == (name, [1, 1], "BYTES")
    _FakeTriton.error = InferenceServerException(QUEUE_FULL, status="StatusCode.UNAVAILABLE")
    outcome, seconds = send(item, 7.5)
    assert outcome == "ServerBusyError: queue full" and seconds >= 0


def test_goodput_counts_answers_in_time_over_first_request_to_last_answer() -> None:
    records = [
        (0.0, "ok", 2.0),
        (0.5, "ServerBusyError: queue full", 0.01),
        (1.0, "ok", 3.0),
        (1.5, "ServerBusyError: queue timeout", 0.8),
        (2.0, "CaptionTimeoutError", 5.0),  # the last to end: 7.0 s after the first was sent
        (3.0, "ok", 5.0),  # answered, but not before its client's 5 s timeout
    ]
    assert goodput(records, client_timeout_s=5.0) == {"good": 2, "span_s": 8.0, "goodput_per_s": 0.25}
    assert refusals(records) == {"refusal_p95_s": 0.8, "refusal_max_s": 0.8}
    assert goodput([], 5.0)["goodput_per_s"] == 0.0
    assert refusals([(0.0, "ok", 1.0)]) == {"refusal_p95_s": None, "refusal_max_s": None}
    shed = [(i * 0.1, "ServerBusyError: queue full", s / 100) for i, s in enumerate(range(1, 21))]
    assert refusals(shed) == {"refusal_p95_s": 0.19, "refusal_max_s": 0.2}  # nearest rank


def test_every_report_states_goodput_against_capacity() -> None:
    options = OverloadOptions(url="x", client_timeout_s=30.0)
    records = [(0.0, "ok", 4.0), (0.1, "ServerBusyError: queue full", 0.02), (0.2, "ok", 3.8)]
    report = summarise(records, 2.0, 12.0, ("ok", 0.7), options)
    assert report["mode"] == "open-loop" and report["sender"] == "sdk" and report["offered_per_s"] == 12.0
    assert report["good"] == 2 and report["span_s"] == pytest.approx(4.0)
    assert report["goodput_per_s"] == pytest.approx(0.5) and report["goodput_ratio"] == pytest.approx(0.25)
    assert report["refusal_max_s"] == report["refusal_p95_s"] == 0.02
    assert met(report) and criterion_met(report)  # the open loop's guarantee does not ask for goodput
    text = format_report(report)
    assert "goodput 0.50/s = 0.25x capacity (2 answers in time over 4.0 s)" in text
    assert "refusals p95 0.020 s, max 0.020 s" in text and "client timeouts 0" in text


def _burst_report(records, capacity=1.0, plain=False) -> dict:
    options = OverloadOptions(
        url="x", burst=2, requests_per_client=2, client_timeout_s=10.0, plain_clients=plain
    )
    return summarise(records, capacity, None, ("ok", 1.0), options)


def test_the_burst_criterion_asks_goodput_no_timeouts_and_fast_refusals() -> None:
    served = [(0.0, "ok", 1.0, 0, 0), (0.0, "ok", 2.0, 1, 0), (1.0, "ok", 1.0, 0, 1)]
    fine = _burst_report([*served, (2.0, "ServerBusyError: queue full", 0.01, 1, 1)], capacity=2.0)
    assert fine["mode"] == "burst" and fine["clients"] == 2 and fine["requests_per_client"] == 2
    assert "offered_per_s" not in fine and fine["records"][0]["client"] == 0
    assert fine["goodput_ratio"] == pytest.approx(3 / 2.01 / 2) and burst_met(fine) and criterion_met(fine)
    assert "a burst of 2 clients x 2 requests: 4 requests" in format_report(fine)
    assert not burst_met(_burst_report(served, capacity=3.0))  # 1.5/s is half of 3/s
    late = _burst_report([*served, (2.0, "ServerBusyError: queue timeout", 1.5, 1, 1)], capacity=1.0)
    assert late["refusal_max_s"] == 1.5 and not burst_met(late)
    timed_out = _burst_report([*served, (2.0, "CaptionTimeoutError", 10.0, 1, 1)], capacity=0.1)
    assert timed_out["client_timeouts"] == 1 and not criterion_met(timed_out)
    assert _burst_report(served, plain=True)["sender"] == "tritonclient"


def test_a_burst_starts_every_client_at_once_and_each_sends_in_turn() -> None:
    clients, per_client, hold_s = 12, 3, 0.05
    calls: list[tuple[int, int, float, float]] = []
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def send(client: int, n: int) -> tuple[str, float]:
        started = time.perf_counter()
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(hold_s)
        with lock:
            in_flight[0] -= 1
        calls.append((client, n, started, time.perf_counter()))
        return "ok", time.perf_counter() - started

    records = burst(send, clients, per_client)
    assert len(records) == len(calls) == clients * per_client
    assert sorted((c, n) for _, _, _, c, n in records) == [
        (c, n) for c in range(clients) for n in range(per_client)
    ]
    firsts = [started for _, n, started, _ in calls if n == 0]
    assert max(firsts) - min(firsts) < 0.1  # released together
    assert most[0] == clients  # all in flight at once
    assert max(t for t, *_, n in records if n == 0) < 0.1
    for c in range(clients):
        own = sorted((n, started, ended) for client, n, started, ended in calls if client == c)
        assert [n for n, *_ in own] == list(range(per_client))
        for (_, _, ended), (_, started, _) in zip(own, own[1:], strict=False):
            assert started >= ended  # the next request waits for the last answer


def test_burst_refuses_an_empty_burst() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        burst(lambda c, n: ("ok", 0.0), 0, 3)


def _fake_sender(sent: list):
    def send(item, timeout_s):
        sent.append((item, timeout_s))
        return ("ServerBusyError: queue full", 0.001) if len(sent) % 3 == 0 else ("ok", 0.01)

    return send


def test_a_burst_run_end_to_end_with_a_fake_sender(monkeypatch, tmp_path) -> None:
    sent: list = []
    monkeypatch.setattr(overload, "sender", lambda options: _fake_sender(sent))
    monkeypatch.setattr(overload, "_inputs", lambda options: [f"text {i}" for i in range(16)])
    options = OverloadOptions(url="x", capacity=50.0, burst=4, requests_per_client=2, client_timeout_s=9.0)
    report = overload.run_overload(options)
    assert report["requests"] == 8 and report["mode"] == "burst" and report["shed"] >= 2
    burst_items = [item for item, timeout_s in sent if timeout_s == 9.0]
    assert sorted(burst_items) == [f"text {i}" for i in range(8)]  # a different input per request
    paths = overload.write_outputs(report, tmp_path)
    assert paths["plot"].stat().st_size > 0
    written = json.loads(paths["json"].read_text())
    for key in ("goodput_per_s", "goodput_ratio", "refusal_p95_s", "refusal_max_s", "client_timeouts"):
        assert key in written


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    traffic_commands.register_overload(parser.add_subparsers())
    return parser.parse_args(["overload", *argv])


def test_the_command_takes_the_modes_and_exits_by_the_burst_criterion(monkeypatch, tmp_path) -> None:
    args = _parse(
        ["--plain-clients", "--burst", "8", "--requests-per-client", "2", "--output-dir", str(tmp_path)]
    )
    assert (args.plain_clients, args.burst, args.requests_per_client) == (True, 8, 2)
    assert (_parse([]).burst, _parse([]).requests_per_client, _parse([]).plain_clients) == (0, 3, False)
    with pytest.raises(SystemExit):
        _parse(["--requests-per-client", "0"])
    seen: list[OverloadOptions] = []
    records = [(0.0, "ok", 1.0, 0, 0), (0.0, "CaptionTimeoutError", 30.0, 1, 0)]

    def run(options: OverloadOptions) -> dict:
        seen.append(options)
        return summarise(records, 1.0, None, ("ok", 1.0), options)

    monkeypatch.setattr(overload, "run_overload", run)
    assert args.func(args) == 1  # a client timeout fails the burst criterion
    assert seen[0].plain_clients and seen[0].burst == 8 and seen[0].requests_per_client == 2
    assert (tmp_path / "overload.json").is_file()
