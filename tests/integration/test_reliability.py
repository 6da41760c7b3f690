"""Reliability against a real tritonserver: fuzz, overload, cancellation, a killed stub, shutdown drain, soak."""

from __future__ import annotations

import pytest

from captioning.testing.fuzz import corpus

pytestmark = pytest.mark.integration


def test_fuzz_every_answer_is_success_or_a_named_refusal(server, flickr_images):
    from captioning.bench.fuzz import run_fuzz

    good = [p.read_bytes() for p in flickr_images[:6]]
    stubs_before = server.live_stubs()
    cases = corpus(good[0], count=300)
    report = run_fuzz(server.grpc_url, cases, good, concurrency=8, timeout_s=120)
    assert report["fuzz"] >= 300 and report["good"] >= 100
    assert not report["wrong"], report["wrong"][:5]  # no crash, hang, wrong answer or unexpected status
    assert set(report["statuses"]) <= {"ok", "INVALID_ARG"}
    refused = [o for o in report["outcomes"] if o["status"] == "INVALID_ARG"]
    assert all(o["message"] for o in refused)  # every refusal names its problem
    by_case = {o["case"]: o for o in report["outcomes"]}
    assert "pixels" in by_case["PNG header 2^31 x 2^31"]["message"]
    assert by_case["12000 x 12000 zlib bomb"]["seconds"] < 5  # refused from the header, not decoded
    assert by_case["1 MB text"]["seconds"] < 5 and "characters long" in by_case["1 MB text"]["message"]
    assert server.live_stubs() == stubs_before and not server.watchdog.restarts  # no stub died


@pytest.fixture(scope="module")
def slow_repository(fixture_checkpoints, tmp_path_factory):
    """Translations forced to 900 tokens and 4 beams: a second or more each, so load can exceed capacity.

    Requests arriving within 0.1 s of each other share a batch: a test's concurrent requests then decode
    together instead of the later one waiting a whole decode in the queue, where the 3 s timeout may shed it."""
    from captioning.decoding import Overrides
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    options = BuildOptions(
        progress=False,
        validate=False,
        max_length=1000,
        caption=Overrides(max_new_tokens=20),
        translation=Overrides(num_beams=4, min_new_tokens=900, max_new_tokens=900),
        repository=RepositoryOptions(
            max_batch_size=4, max_queue_size=2, queue_timeout_s=3.0, max_queue_delay_us=100_000
        ),
    )
    path = tmp_path_factory.mktemp("slow") / "repository"
    return build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, path, options)


@pytest.fixture(scope="module")
def slow_server(slow_repository, tmp_path_factory):
    from serving_helpers import serve

    with serve(slow_repository, tmp_path_factory.mktemp("slow-server")) as running:
        yield running


def _translate(url: str, text: str, timeout_s: float, retries: int = 0):
    import time

    from captioning.client import CaptionClient, RetryPolicy

    started = time.perf_counter()
    try:
        with CaptionClient(
            url, timeout_s=timeout_s, retry=RetryPolicy(retries=retries, backoff_s=0.2)
        ) as client:
            client.translate(text)
        return "ok", time.perf_counter() - started
    except Exception as exc:
        return type(exc).__name__, time.perf_counter() - started


def test_overload_is_shed_fast_and_nothing_reaches_the_client_timeout(slow_server, tmp_path):
    """`captioning overload` at 6x the measured capacity: every request is served or shed, none reaches its
    client's timeout, the shed ones are answered at once (or by the 3 s queue timeout where a batch ran
    longer), and the server serves normally right after."""
    from captioning.bench.overload import OverloadOptions, format_report, run_overload, write_outputs

    options = OverloadOptions(
        url=slow_server.grpc_url, kind="text", duration_s=10, capacity_s=8, client_timeout_s=60
    )
    report = run_overload(options)
    print(format_report(report))
    assert write_outputs(report, tmp_path)["plot"].stat().st_size > 0
    kinds = set(report["outcomes"])
    assert all(k == "ok" or k.startswith("ServerBusyError") for k in kinds), kinds
    assert report["shed"] and "ok" in kinds  # more than capacity, and still serving
    assert report["client_timeouts"] == 0
    shed = sorted(r["seconds"] for r in report["records"] if r["outcome"].startswith("ServerBusyError"))
    assert shed[-1] < 5.0  # queue full: at once; queued too long: after the 3 s queue timeout
    assert shed[len(shed) // 2] < 1.0  # most shed requests are answered at once
    assert report["right_after"]["outcome"] == "ok"  # serving normally right after


def test_a_burst_of_plain_clients_is_measured_as_goodput(slow_server, tmp_path):
    """`captioning overload --burst 12 --requests-per-client 2 --plain-clients`: plain tritonclient requests
    without a deadline, every one accounted for, refusals fast, goodput stated against the capacity (its
    floor is asserted on the image pipeline, in test_door_admission.py)."""
    from captioning.bench.overload import OverloadOptions, format_report, run_overload

    options = OverloadOptions(
        url=slow_server.grpc_url, kind="text", capacity_s=6, client_timeout_s=60, plain_clients=True,
        burst=12, requests_per_client=2,
    )  # fmt: skip
    report = run_overload(options)
    print(format_report(report))
    assert report["requests"] == 24 == sum(o["count"] for o in report["outcomes"].values())
    assert all(k == "ok" or k.startswith("ServerBusyError") for k in report["outcomes"]), report["outcomes"]
    assert report["good"] > 0 and report["goodput_ratio"] is not None and report["client_timeouts"] == 0
    assert report["refusal_max_s"] is None or report["refusal_max_s"] < 5.0


def test_abandoned_requests_stop_being_decoded(slow_server):
    import time
    from concurrent.futures import ThreadPoolExecutor

    alone_started = time.perf_counter()
    assert _translate(slow_server.grpc_url, "one sentence alone", 120.0)[0] == "ok"
    one = time.perf_counter() - alone_started
    log = slow_server.options.log_file
    before = log.read_text().count("every one was cancelled")
    with ThreadPoolExecutor(max_workers=8) as pool:  # clients that give up after 0.3 s
        outcomes = list(
            pool.map(lambda i: _translate(slow_server.grpc_url, f"an abandoned text {i}", 0.3), range(8))
        )
    kinds = [
        kind for kind, _ in outcomes
    ]  # timed out while decoding, or shed from the queue at their deadline
    assert set(kinds) <= {"CaptionTimeoutError", "ServerBusyError"} and "CaptionTimeoutError" in kinds
    started = time.perf_counter()
    # Triton drops timed-out requests from a queue when it next looks at it: a shed retry or two is expected.
    assert _translate(slow_server.grpc_url, "a cat sleeps", 120.0, retries=5)[0] == "ok"
    waited = time.perf_counter() - started
    deadline = time.monotonic() + 10
    while log.read_text().count("every one was cancelled") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count("every one was cancelled") > before  # the server stopped those decodes
    assert waited < one * 4  # not behind two batches of abandoned work (8 requests in batches of 4)


def _assert_control_plane_closed(http_url: str) -> None:
    import urllib.error
    import urllib.request

    url = f"http://{http_url}/v2/repository/models/caption_generator/unload"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=30)
    assert refused.value.code == 403


def test_a_killed_stub_is_restarted_and_readiness_never_lies(repository, flickr_images, tmp_path):
    import os
    import signal
    import time

    from captioning.client import CaptionClient
    from captioning.server.watchdog import stub_models, stub_processes

    from serving_helpers import serve

    image = flickr_images[0].read_bytes()
    with serve(repository, tmp_path) as server, CaptionClient(server.grpc_url, timeout_s=30) as client:
        _assert_control_plane_closed(server.http_url)  # the watchdog below reloads through it with the key
        first = client.caption(image)
        expected = (first.english, first.arabic)
        pid = next(
            p for p, model in stub_processes(server.process.pid).items() if model == "caption_generator"
        )
        os.kill(pid, signal.SIGKILL)
        killed, samples, served_again, errors = time.monotonic(), [], None, []
        while time.monotonic() - killed < 60 and served_again is None:
            ready = client.is_ready()  # what a load balancer would have read just before sending
            sent = round(time.monotonic() - killed, 3)
            try:
                result = client.caption(image)
                ok = (result.english, result.arabic) == expected
            except Exception as exc:
                ok = False
                errors.append((round(time.monotonic() - killed, 2), repr(exc)[:300]))
            samples.append((sent, ok, ready))
            if ok:
                served_again = time.monotonic() - killed
            time.sleep(0.1)
        assert served_again is not None and served_again < 60
        # What failed is retryable: the request that reached the dead stub comes back as ServerBusyError (the
        # SDK's RetryPolicy takes it), those sent while the model reloads as ModelNotReadyError.
        assert errors and {e.split("(")[0] for _, e in errors} <= {"ServerBusyError", "ModelNotReadyError"}, (
            errors
        )
        # The watchdog holds a pidfd on each stub and reloads the model as the stub dies, so no request sent
        # while readiness said yes fails, except one that raced the crash itself (sent within the first 50 ms,
        # before the watchdog's unload reached Triton).
        lies = [t for t, ok, ready in samples if ready and not ok and t > 0.05]
        assert not lies, (samples, errors[-3:])
        assert any(not ready for _, _, ready in samples)  # it said so while it reloaded
        assert server.watchdog.restarts and stub_models(server.process.pid)["caption_generator"] == 1
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 20  # no wait for the lost instance's whole exit timeout


def test_sigterm_drains_in_flight_requests_and_exits_0(slow_repository, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from captioning.client import CaptionClient
    from captioning.server.launcher import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    captioning = str(Path(sys.executable).parent / "captioning")
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [captioning, "serve", "--repository", str(slow_repository), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"localhost:{grpc}"
    try:
        with CaptionClient(url, wait_ready_s=240) as client:
            client.translate("warm up")
        with ThreadPoolExecutor(max_workers=2) as pool:  # one batch of the slow repository
            in_flight = [pool.submit(_translate, url, f"sentence {i} in flight", 120.0) for i in range(2)]
            time.sleep(1.0)  # they are decoding now
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused = _translate(url, "sent after SIGTERM", 10.0)
            results = [f.result() for f in in_flight]
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert [kind for kind, _ in results] == ["ok"] * 2  # the in-flight requests completed
    assert refused[0] != "ok"  # a new request after the signal is not accepted
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]


@pytest.mark.slow
def test_two_minute_soak_without_failure_or_growth(server, tmp_path):
    from captioning.bench.soak import SoakOptions, format_report, run_soak, write_outputs

    options = SoakOptions(
        url=server.grpc_url,
        concurrency=16,
        duration_s=120,
        warmup_s=40,
        server_pid=server.process.pid,
        windows=4,
    )
    report = run_soak(options)
    print(format_report(report))
    paths = write_outputs(report, tmp_path)
    assert paths["plot"].stat().st_size > 0
    assert report["requests"] > 100 and report["failed"] == 0 and report["wrong"] == 0, report["statuses"]
    assert len(report["memory_growth_after_warmup"]) >= 5  # tritonserver and its four stubs
    assert set(report["private_growth_after_warmup"]) == set(report["memory_growth_after_warmup"])
    assert all(kib > 0 for kib in report["memory"][-1]["anon_kib"].values())  # private anonymous, per process
    grown = {name: g for name, g in report["memory_growth_after_warmup"].items() if g is None or g > 0.10}
    assert not grown, grown  # every process within 10% of its size after the warm-up
