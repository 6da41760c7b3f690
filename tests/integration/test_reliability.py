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
