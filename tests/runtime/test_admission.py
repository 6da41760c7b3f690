"""The wait forecast replays the queue at the measured cost of a step: running cohorts free their rows when
their expected steps are done, waiting requests join in arrival order, each step costs a pass per cohort (or,
where cohorts merge into one pass, a fixed part plus a part per cohort fitted to the recent steps), and nothing
is forecast before a step was timed."""

from __future__ import annotations

import pytest

from captioning.runtime.admission import WaitForecast


def _forecast(step_s: float) -> WaitForecast:
    forecast = WaitForecast()
    forecast.observe_step(step_s, cohorts=1)
    return forecast


def test_nothing_is_forecast_before_a_step_was_timed():
    assert WaitForecast().wait_s(4, [(10, 4)], [(1, 10)]) is None
    assert WaitForecast().decode_s(10, cohorts=2) is None


def test_a_request_that_fits_beside_the_running_rows_waits_nothing_and_decodes_its_steps():
    # three cohorts would step together (one running, two joining): each step costs three cohort steps
    assert _forecast(0.5).wait_s(4, [(10, 2)], [(1, 8), (1, 6)]) == (0.0, 9.0)
    assert _forecast(0.5).decode_s(6, cohorts=3) == 9.0


def test_waiting_requests_join_as_running_cohorts_free_their_rows():
    forecast = _forecast(1.0)
    running = [(5, 2), (9, 2)]  # 4 of 4 rows busy, freed after 5 and 9 steps
    # a step costs one second per cohort stepping: 2 running + the waiting ones, at most 4 (the rows)
    assert forecast.wait_s(4, running, [(2, 10)]) == (15.0, 30.0)
    assert forecast.wait_s(4, running, [(2, 10), (2, 10)]) == (36.0, 40.0)
    # behind both joiners (they free their rows at 20 + 40 and 36 + 40 s), or behind the first only
    assert forecast.wait_s(4, running, [(2, 10), (2, 10), (3, 10)]) == (76.0, 40.0)
    assert forecast.wait_s(4, running, [(2, 10), (2, 10), (2, 10)]) == (60.0, 40.0)


def test_steps_left_follow_how_early_cohorts_end():
    forecast = _forecast(1.0)
    assert forecast.steps_left(done=3, least=0, most=20) == 17  # nothing seen yet: the most steps
    for _ in range(30):
        forecast.observe_cohort(steps=5, most=20)  # end of sequence comes after a quarter of the most
    assert forecast.steps_left(done=0, least=0, most=20) == pytest.approx(5.0, abs=0.1)
    assert forecast.steps_left(done=0, least=12, most=20) == 12  # forced new tokens still count
    assert forecast.steps_left(done=9, least=0, most=20) == 0  # running past the forecast: about to end


def test_the_step_cost_follows_the_load():
    forecast = WaitForecast(smoothing=0.5)
    forecast.observe_step(1.0, cohorts=1)
    forecast.observe_step(6.0, cohorts=2)  # a step of two cohorts, a pass each: 3 s per pass
    assert forecast.pass_s == pytest.approx(3.0)  # the first step (a cold process) is replaced
    forecast.observe_step(1.0, cohorts=1)
    assert forecast.pass_s == pytest.approx(2.0)  # later ones are smoothed


def _observed(cost, counts, merged: bool = False) -> WaitForecast:
    forecast = WaitForecast()
    for n in counts:
        forecast.observe_step(cost(n), cohorts=n, passes=1 if merged else n)
    return forecast


def test_a_merged_step_is_forecast_by_its_fixed_and_per_cohort_cost():
    # the torch runner: cohorts share one forward pass, so a step is mostly the weights read once
    forecast = _observed(lambda n: 0.4 + 0.05 * n, [1, 2, 3, 4, 3, 2, 4, 3, 2, 1], merged=True)
    assert forecast.step_cost.line() == pytest.approx((0.4, 0.05))
    assert forecast.decode_s(10, cohorts=16) == pytest.approx(10 * (0.4 + 0.05 * 16))


def test_separate_graph_calls_are_forecast_per_cohort():
    # the ONNX graphs: every cohort its own call, so a step costs a call per cohort, however the recent
    # steps happen to scatter (a fitted line with a fixed part admitted requests refused later, when they
    # would have joined)
    forecast = _observed(lambda n: 0.1 + 0.3 * n, [1, 2, 3, 4] * 3)
    assert forecast.decode_s(1, cohorts=16) == pytest.approx(16 * forecast.pass_s)


def test_until_the_fit_separates_its_parts_a_merged_step_costs_one_pass():
    merged = _observed(lambda n: 0.4 + 0.05 * n, [2, 3, 3], merged=True)  # too few steps to fit
    assert merged.step_cost.line() is None
    assert merged.decode_s(1, cohorts=6) == pytest.approx(merged.pass_s)
    one_count = _observed(lambda n: 0.6, [3] * 20, merged=True)
    assert one_count.step_cost.line() is None and one_count.decode_s(1, cohorts=5) == pytest.approx(0.6)
    flat = _observed(lambda n: 0.6 - 0.01 * n, [1, 2, 3, 4] * 3, merged=True)  # cheaper with more: noise
    assert flat.step_cost.line()[1] == 0.0
    origin = _observed(lambda n: 0.3 * n - (0.01 if n == 1 else 0.0), [1, 2, 3, 4] * 3, merged=True)
    fixed, per_cohort = origin.step_cost.line()  # a negative fixed part is noise: the line through the origin
    assert fixed == 0.0 and per_cohort == pytest.approx(0.3, rel=0.01)


def test_a_request_wider_than_the_batch_is_left_to_the_caller():
    assert _forecast(1.0).wait_s(2, [], [(3, 10)]) is None


def test_the_gap_between_steps_is_paid_once_per_step():
    forecast = _forecast(0.5)
    forecast.observe_gap(0.5)  # Triton rescheduling the requests in flight between two steps
    assert forecast.decode_s(6, cohorts=3) == 6 * (3 * 0.5 + 0.5)
    assert forecast.wait_s(4, [(10, 2)], [(1, 8), (1, 6)]) == (0.0, 12.0)


def test_forecasts_are_scaled_by_the_worst_recent_wait_never_shortened():
    forecast = _forecast(1.0)
    forecast.observe_wait(8.0, 10.0)  # waited a quarter longer than forecast
    assert forecast.bias == pytest.approx(1.25)
    assert forecast.decode_s(10, cohorts=1) == pytest.approx(12.5)
    forecast.observe_wait(8.0, 2.0)  # shorter waits leave the worst case standing...
    forecast.observe_wait(0.1, 5.0)  # ...and a ratio of near-zero forecasts is noise
    assert forecast.bias == pytest.approx(1.25)
    for _ in range(32):
        forecast.observe_wait(8.0, 8.0)  # ...until it is no longer recent
    assert forecast.bias == 1.0
    forecast.observe_wait(1.0, 100.0)  # a stalled server: bounded
    assert forecast.bias == 4.0
