"""The soak's and the overload tool's arithmetic, without a server (the served runs are integration tests)."""

from __future__ import annotations

import pytest

from captioning.bench.overload import OverloadOptions, format_report, met, outcome_of, summarise
from captioning.bench.soak import _growth, _resident
from captioning.client import CaptionTimeoutError, ServerBusyError


def _samples(sizes: list[int], every_s: float = 2.0) -> list[dict]:
    return [{"t": i * every_s, "rss_kib": {"p": size}} for i, size in enumerate(sizes)]


def test_a_spike_at_either_end_is_not_growth_but_a_trend_is() -> None:
    flat = [1000] * 50
    spiky = [1100] + flat[1:-1] + [900]  # one sample each end, taken with many requests in flight or none
    assert _growth(_samples(spiky), _resident) == {"p": 0.0}
    trend = list(range(1000, 1100, 2))  # +10% over the span, steadily
    assert _growth(_samples(trend), _resident)["p"] == pytest.approx(0.08, abs=0.01)


def test_growth_of_a_process_that_vanished_is_unknown() -> None:
    samples = _samples([1000] * 10)
    for s in samples[5:]:
        s["rss_kib"]["p"] = None
    assert _growth(samples, _resident) == {"p": None}


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (ServerBusyError("x: Exceeds maximum queue size"), "ServerBusyError: queue full"),
        (ServerBusyError("x: Request timeout expired"), "ServerBusyError: queue timeout"),
        (
            ServerBusyError("x: Exceeds the queue timeout: ... (forecast from the steps"),
            "ServerBusyError: forecast",
        ),
        (CaptionTimeoutError("late"), "CaptionTimeoutError"),
    ],
)
def test_outcomes_say_how_a_request_was_shed(exc, outcome) -> None:
    assert outcome_of(exc) == outcome


def test_the_guarantee_fails_on_a_client_timeout_a_late_shed_or_another_error() -> None:
    options = OverloadOptions(url="x")
    fine = [(0.1, "ok", 12.0), (0.2, "ServerBusyError: queue full", 0.003), (0.3, "ok", 11.0)]
    report = summarise(fine, 2.0, 12.0, ("ok", 0.7), options)
    assert met(report) and report["shed"] == 1 and report["outcomes"]["ok"]["count"] == 2
    assert "shed after 1 s: 0 of 1" in format_report(report)
    for bad in [
        (0.4, "CaptionTimeoutError", 30.0),
        (0.4, "ServerBusyError: queue timeout", 10.2),
        (0.4, "CaptionError", 0.1),
    ]:
        assert not met(summarise([*fine, bad], 2.0, 12.0, ("ok", 0.7), options)), bad
    assert not met(summarise(fine, 2.0, 12.0, ("ServerBusyError: queue full", 0.0), options))
