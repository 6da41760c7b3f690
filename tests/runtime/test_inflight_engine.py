"""In-flight batching against a fake decoder: answers equal batch decoding, requests join at the next step
and leave when final, the queue bounds shed at once, and cancellation and failures stay with their requests."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.decoding import GenerationCancelled, Overrides, served
from captioning.runtime.inflight import HEADROOM, InflightEngine, Limits, ServerBusy
from captioning.runtime.stages import CaptionStage
from captioning.runtime.tokenization import TextCodec

from fakes import SETTINGS, FakeDecoder


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stage(decoder: FakeDecoder | None = None) -> CaptionStage:
    from fakes import FakeTokenizer

    return CaptionStage(decoder=decoder or FakeDecoder(), settings=SETTINGS, codec=TextCodec(FakeTokenizer()))


def _embeds(*seeds: int) -> list[np.ndarray]:
    return [np.full((3, 4), s, dtype=np.float32) for s in seeds]


def _engine(stage: CaptionStage, limits: Limits | None = None, clock=None) -> InflightEngine:
    return InflightEngine(stage.steps, limits or Limits(), **({"clock": clock} if clock else {}))


def _submit(engine, stage, key, embeds, options=None, cancelled=lambda: False):
    items, settings = stage.prepared(embeds, options or Overrides())
    engine.submit(key, items, settings, cancelled)


def _run(engine, until: set, limit: int = 50) -> tuple[dict, dict]:
    """Step until every key in `until` is answered: (answers, the step each was answered at)."""
    answers, at = {}, {}
    for step in range(limit):
        for key, result in engine.step().items():
            answers[key], at[key] = result, step
        if until <= answers.keys():
            return answers, at
    raise AssertionError(f"not answered after {limit} steps: {until - answers.keys()}")


@pytest.mark.parametrize("beams", [1, 3])
def test_staggered_requests_get_what_batch_decoding_gives(beams):
    stage = _stage()
    options = Overrides(num_beams=beams)
    engine = _engine(stage)
    _submit(engine, stage, "a", _embeds(1, 2), options)
    engine.step()
    engine.step()
    _submit(engine, stage, "b", _embeds(3), options)  # joins two steps into a's decode
    _submit(engine, stage, "c", _embeds(4), Overrides(num_beams=2))  # other settings: its own cohort
    answers, _ = _run(engine, {"a", "b", "c"})
    assert answers["a"] == stage.run(_embeds(1, 2), [options] * 2)
    assert answers["b"] == stage.run(_embeds(3), [options])
    assert answers["c"] == stage.run(_embeds(4), [Overrides(num_beams=2)])
    assert not engine.cohorts and not engine.pending and "a" not in engine


def test_a_short_request_overtakes_a_long_one_that_was_decoding():
    stage = _stage()
    engine = _engine(stage)
    _submit(engine, stage, "long", _embeds(1), Overrides(max_new_tokens=5))
    engine.step()
    _submit(engine, stage, "short", _embeds(2), Overrides(max_new_tokens=1))
    answers, at = _run(engine, {"long", "short"})
    assert at["short"] < at["long"]
    assert answers["short"] == stage.run(_embeds(2), [Overrides(max_new_tokens=1)])


def test_a_full_queue_is_refused_at_once_and_a_stale_wait_is_shed():
    clock = Clock()
    stage = _stage()
    engine = _engine(stage, Limits(max_rows=1, max_queue=1, queue_timeout_s=5.0), clock)
    _submit(engine, stage, "running", _embeds(1))
    engine.step()
    _submit(engine, stage, "waiting", _embeds(2))  # no free row: it waits
    with pytest.raises(ServerBusy, match="already waiting"):
        _submit(engine, stage, "third", _embeds(3))
    clock.now = 6.0
    answers = engine.step()
    assert isinstance(answers["waiting"], ServerBusy) and "limit 5 s" in str(answers["waiting"])
    with pytest.raises(ValueError, match="at most 1 rows"):
        _submit(engine, stage, "wide", _embeds(1, 2))


def _ticking(stage: CaptionStage, clock: Clock, step_s: float = 1.0):
    """The stage's steps, each costing `step_s` of the engine's clock (a search that answers its own forward
    steps: the engine drives those too)."""

    def start(items, settings):
        steps = served(stage.steps(items, settings))

        def run():
            while True:
                clock.now += step_s
                try:
                    progress = next(steps)
                except StopIteration as stop:
                    return stop.value
                yield progress

        return run()

    return start


def test_a_request_forecast_to_outwait_the_queue_timeout_is_refused_at_once_and_the_admitted_are_served():
    clock, stage = Clock(), _stage()
    engine = InflightEngine(
        _ticking(stage, clock), Limits(max_rows=1, max_queue=8, queue_timeout_s=6.0), clock
    )
    _submit(engine, stage, "first", _embeds(1))
    engine.step()
    assert engine.forecast.pass_s == 1.0  # one step timed: from here on arrivals are forecast
    admitted, refused = ["first"], []
    for i in range(6):
        try:
            _submit(engine, stage, i, _embeds(i + 2))
            admitted.append(i)
        except ServerBusy as busy:
            assert "Exceeds the queue timeout" in str(busy) and "limit 6 s" in str(busy)
            refused.append(i)
    # a cohort runs 5 steps of 1 s: the first waiter joins after 4 s, within the headroom of the 6 s limit
    # (4.5 s); the next would wait 9 s
    assert admitted == ["first", 0] and refused == list(range(1, 6))
    answers, _ = _run(engine, {"first", 0})
    assert answers[0] == stage.run(_embeds(2), [Overrides()])  # admitted, and not shed late


def test_a_request_forecast_to_finish_after_its_own_timeout_is_refused_at_once():
    clock, stage = Clock(), _stage()
    engine = InflightEngine(_ticking(stage, clock), Limits(max_rows=2, queue_timeout_s=0), clock)
    _submit(engine, stage, "first", _embeds(1))
    _run(engine, {"first"})
    items, settings = stage.prepared(_embeds(2), Overrides())
    steps = settings.max_length - len(settings.prompt_ids)  # 1 s each, nothing to wait for
    refused = "Exceeds the request's timeout: it would wait about 0.0 s and decode"
    with pytest.raises(ServerBusy, match=refused):
        engine.submit("tight", items, settings, timeout_s=steps / 2)
    with pytest.raises(ServerBusy, match=refused):  # on time if the forecast were exact: past the headroom
        engine.submit("snug", items, settings, timeout_s=steps + 1.0)
    engine.submit("roomy", items, settings, timeout_s=steps / HEADROOM + 1.0)
    answers, _ = _run(engine, {"roomy"})
    assert answers["roomy"] == stage.run(_embeds(2), [Overrides()])


def test_a_waiter_that_can_no_longer_finish_within_its_timeout_is_refused_when_it_would_join():
    clock, stage = Clock(), _stage()
    engine = InflightEngine(_ticking(stage, clock), Limits(max_rows=1, queue_timeout_s=0), clock)
    _submit(engine, stage, "first", _embeds(1))
    items, settings = stage.prepared(_embeds(2), Overrides())
    engine.submit("late", items, settings, timeout_s=6.0)  # nothing timed yet: taken
    engine.submit("patient", items, settings, timeout_s=60.0)
    answers, _ = _run(engine, {"first", "late", "patient"})
    # it waited 5 s for the first to finish and would decode 5 more: refused before its first step
    assert isinstance(answers["late"], ServerBusy) and "it waited 5.0 s" in str(answers["late"])
    assert answers["patient"] == stage.run(_embeds(2), [Overrides()])


@pytest.mark.parametrize(("first_timeout_s", "refused"), [(8.0, True), (60.0, False)])
def test_a_request_that_would_slow_a_running_one_past_its_timeout_is_refused(first_timeout_s, refused):
    clock, stage = Clock(), _stage()
    engine = InflightEngine(_ticking(stage, clock), Limits(max_rows=2, queue_timeout_s=0), clock)
    items, settings = stage.prepared(_embeds(1), Overrides())
    engine.submit("first", items, settings, timeout_s=first_timeout_s)
    engine.step()  # 1 s gone, 4 steps of 1 s left alone; with a second cohort each step costs 2 s: 9 s in all
    second = stage.prepared(_embeds(2), Overrides())
    if refused:
        with pytest.raises(ServerBusy, match="Exceeds the running requests' timeouts"):
            engine.submit("second", *second)
        answers, _ = _run(engine, {"first"})
    else:
        engine.submit("second", *second)
        answers, _ = _run(engine, {"first", "second"})
        assert answers["second"] == stage.run(_embeds(2), [Overrides()])
    assert answers["first"] == stage.run(_embeds(1), [Overrides()]) and clock.now <= first_timeout_s


def test_cancelled_requests_leave_and_an_all_cancelled_cohort_stops():
    clock = Clock()
    stage = _stage()
    engine = _engine(stage, clock=clock)
    gone = {"a": False, "b": False}
    _submit(engine, stage, "a", _embeds(1), cancelled=lambda: gone["a"])
    engine.step()
    _submit(engine, stage, "b", _embeds(2), cancelled=lambda: gone["b"])
    gone["a"] = True
    clock.now = 1.0
    answers = engine.step()
    assert isinstance(answers["a"], GenerationCancelled) and "b" not in answers
    assert len(engine.cohorts) == 1  # a's cohort stopped computing; b's goes on
    answers, _ = _run(engine, {"b"})
    assert answers["b"] == stage.run(_embeds(2), [Overrides()])


def test_a_failing_cohort_fails_only_its_requests():
    stage = _stage(FakeDecoder(fail_when_beams=3))
    engine = _engine(stage)
    _submit(engine, stage, "bad", _embeds(1), Overrides(num_beams=3))
    _submit(engine, stage, "good", _embeds(2))
    answers, _ = _run(engine, {"bad", "good"})
    assert isinstance(answers["bad"], RuntimeError) and "decoder broke" in str(answers["bad"])
    assert answers["good"] == stage.run(_embeds(2), [Overrides()])


def test_bad_options_are_refused_before_admission():
    with pytest.raises(ValueError, match="num_beams"):
        _stage().prepared(_embeds(1), Overrides(num_beams=0))


def test_an_answered_cohort_frees_its_session_without_the_cycle_collector():
    """As in batch decoding (test_stages.py): a cohort's session is freed by reference counts once its requests
    are answered, so memory does not wait for the cyclic collector."""
    import gc

    from fakes import TrackedDecoder

    decoder = TrackedDecoder()
    stage = _stage(decoder)
    engine = _engine(stage)
    gc.collect()
    gc.disable()
    try:
        _submit(engine, stage, "a", _embeds(1, 2), Overrides(num_beams=3))
        engine.step()
        _submit(engine, stage, "b", _embeds(3))  # a second cohort, admitted a step later
        answers, _ = _run(engine, {"a", "b"})
        assert all(isinstance(r, list) for r in answers.values()), answers
        assert len(decoder.sessions) == 2 and [ref() for ref in decoder.sessions] == [None, None]
    finally:
        gc.enable()


def test_the_time_between_busy_steps_is_observed_and_an_idle_pause_is_not():
    clock, stage = Clock(), _stage()
    engine = InflightEngine(_ticking(stage, clock), Limits(max_rows=2, queue_timeout_s=0), clock)
    _submit(engine, stage, "first", _embeds(1))
    engine.step()
    clock.now += 0.5  # Triton reschedules the request still in flight
    engine.step()
    assert engine.forecast.gap_s == 0.5
    _run(engine, {"first"})
    clock.now += 100.0  # nothing in flight: the next step waits for an arrival, which is not its cost
    _submit(engine, stage, "second", _embeds(2))
    engine.step()
    assert engine.forecast.gap_s < 1.0


def test_a_request_that_waited_longer_than_forecast_corrects_later_forecasts():
    clock, stage = Clock(), _stage()
    engine = InflightEngine(_ticking(stage, clock), Limits(max_rows=1, queue_timeout_s=0), clock)
    _submit(engine, stage, "first", _embeds(1))
    engine.step()
    _submit(engine, stage, "second", _embeds(2))  # forecast: behind the first's 4 steps left, 1 s each
    assert engine.pending[-1].forecast_wait_s == pytest.approx(4.0)
    while any(r.key == "second" for r in engine.pending):
        clock.now += 1.0  # the server got slower between steps after the forecast
        engine.step()
    assert engine.forecast.bias > 1.0


def test_a_forecast_wait_within_the_limit_but_past_the_headroom_is_refused():
    clock, stage = Clock(), _stage()
    engine = InflightEngine(_ticking(stage, clock), Limits(max_rows=1, queue_timeout_s=5.0), clock)
    _submit(engine, stage, "first", _embeds(1))
    engine.step()
    with pytest.raises(ServerBusy, match="would wait about 4.0 s"):  # 4 s < 5 s, but past 0.75 x 5 s
        _submit(engine, stage, "second", _embeds(2))


def test_the_first_step_of_a_process_stands_until_the_second_replaces_it():
    # it pays the process's one-time costs (weights paged in, kernels chosen): on the torch runner BLIP's took
    # 1.6 s against about 0.05 s, and smoothed into later steps it refused a burst that was then served in time
    clock, stage = Clock(), _stage()
    cold = {"first": 10.0}

    def start(items, settings):
        steps = _ticking(stage, clock)(items, settings)

        def run():
            clock.now += cold.pop("first", 0.0)  # inside the first step
            return (yield from steps)

        return run()

    engine = InflightEngine(start, Limits(max_rows=2, queue_timeout_s=0), clock)
    _submit(engine, stage, "first", _embeds(1))
    engine.step()
    assert engine.forecast.pass_s == pytest.approx(11.0)  # forecasts from the first step on
    engine.step()
    assert engine.forecast.pass_s == pytest.approx(1.0)  # not smoothed into the later steps
