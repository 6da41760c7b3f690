"""In-flight batching of a generation stage: a request joins at the next decode step and leaves as soon as its
answer is final, instead of waiting for the batch that was decoding when it arrived.

Triton drives it (docs/design.md): the generator's config uses the sequence batcher's *iterative sequences*,
so every `execute` is one step for the requests in flight, and requests not yet answered are rescheduled into
the next one, beside newly arrived requests. This module is the plain part: no Triton import.

Requests admitted at the same step and sharing settings form a *cohort*, one `generate()` batch run a step at
a time (`captioning.decoding.generate_calls`), so every answer is token for token `generate()`'s. Every cohort
steps in each `execute`: the engine collects each cohort's forward step and answers them together
(`captioning.runtime.merging`), in one forward pass where the decoder can merge them (the torch runner: each
cohort attends to its own caches, every weight product covers all rows) and one graph call per cohort where it
cannot (the exported ONNX step graphs take one past length per call). A cohort stops computing when all its
requests are answered (final, failed or cancelled).

Admission is bounded like Triton's queue policy: at most `max_rows` sources decode at once, at most
`max_queue` requests wait, none longer than `queue_timeout_s`; past a bound a request fails with
`ServerBusy` (UNAVAILABLE), at once. A request that would wait longer than `queue_timeout_s`, or finish after
its own timeout, as forecast from the steps timed under the current load (`captioning.runtime.admission`) with
a quarter of headroom (`HEADROOM`), is refused at once too, instead of being shed when its time is up or decoded for a client that has gone; and so is
a request whose joining would slow the requests already decoding past their own timeouts, so that under
overload the engine holds the load its clients' timeouts allow and sheds the rest on arrival.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence

from captioning import contract
from captioning.decoding import GenerationCancelled, GenerationSettings, Progress, StepCall
from captioning.runtime.admission import WaitForecast
from captioning.runtime.merging import merges, run_calls

LOG = logging.getLogger(__name__)

Result = list[str] | Exception
# (items, settings) -> a search of texts run a step per `send()`, yielding its forward steps (`StepCall`)
StartSteps = Callable[[list, GenerationSettings], "object"]
CANCEL_CHECK_S = 0.25  # is_cancelled() is a round trip to the server: ask each request at most this often
# A request is admitted only if forecast to join within this share of the queue timeout, and to finish within
# this share of its own: a forecast made while the queue is short misses the slowdown a filling queue brings
# (measured up to a third, docs/reliability.md).
HEADROOM = 0.75
REPORT_S = 60.0  # how often a busy engine logs what it did


class ServerBusy(Exception):
    """The stage is at its admission bound; the client should retry later (Triton's UNAVAILABLE)."""


_SLOWS_OTHERS = (
    "Exceeds the running requests' timeouts: joining now would slow the requests decoding past their own "
    "timeouts (forecast from the steps timed at this load); retry later"
)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_rows: int = contract.MAX_BATCH_SIZE  # sources decoding at once
    max_queue: int = contract.MAX_QUEUE_SIZE  # requests waiting to join (0: no bound)
    queue_timeout_s: float = contract.QUEUE_TIMEOUT_S  # longest wait to join (0: no bound)


@dataclasses.dataclass
class _Request:
    key: Hashable
    items: list
    settings: GenerationSettings
    arrived: float
    cancelled: Callable[[], bool]
    timeout_s: float = 0.0  # its own timeout (0: none)
    offset: int = 0  # its first item's index in its cohort
    forecast_wait_s: float | None = None  # forecast on arrival, compared with its wait when it joins
    admitted: bool = False  # by the door, for the whole pipeline: never shed by this stage's own bounds


@dataclasses.dataclass
class _Cohort:
    requests: list[_Request]
    steps: object  # generator of StepCall and Progress, returning every item's text
    open: set = dataclasses.field(default_factory=set)  # keys not answered yet
    least: int = 0  # new tokens its settings force and allow
    most: int = 0
    done: int = 0  # steps taken
    finished: bool = False  # ran to its final answers (not ended by cancellation or a failure)
    call: StepCall | None = None  # its forward step, waiting to be answered

    @property
    def rows(self) -> int:
        return sum(len(r.items) for r in self.requests)


class InflightEngine:
    def __init__(
        self, start: StartSteps, limits: Limits = Limits(), clock=time.monotonic, merge: bool = True
    ) -> None:
        self.start, self.limits, self.clock = start, limits, clock
        self.merge = merge  # one forward pass per step where the decoder can (False: one per cohort)
        self.pending: deque[_Request] = deque()
        self.cohorts: list[_Cohort] = []
        self.known: set = set()
        self.next_cancel_check = 0.0
        self.forecast = WaitForecast()
        self.busy_since: float | None = None  # when the last step ended, if it left requests in flight
        self.passes = 0  # forward passes run (merged or not)
        self.cohort_steps = 0  # forward steps the cohorts asked for; more than `passes` where they merged
        self.next_report: float | None = None
        self.merging = False  # the decoder runs a step's cohorts in one forward pass

    def __contains__(self, key: Hashable) -> bool:
        return key in self.known

    @property
    def running_rows(self) -> int:
        return sum(c.rows for c in self.cohorts)

    def submit(
        self,
        key: Hashable,
        items: Sequence,
        settings: GenerationSettings,
        cancelled: Callable[[], bool] = lambda: False,
        timeout_s: float = 0.0,
        admitted: bool = False,
    ) -> None:
        """Queue a request to join at the next step; ServerBusy when the queue is full or it would wait or
        take too long (`timeout_s`: the request's own timeout, 0 for none), ValueError when it has more rows
        than may ever decode at once. A request the door `admitted` joins in turn, never shed here."""
        if len(items) > self.limits.max_rows:
            raise ValueError(f"a request may carry at most {self.limits.max_rows} rows, got {len(items)}")
        if admitted:
            self.pending.append(
                _Request(key, list(items), settings, self.clock(), cancelled, 0.0, admitted=True)
            )
            self.known.add(key)
            return
        if self.limits.max_queue and len(self.pending) >= self.limits.max_queue:
            raise ServerBusy(  # Triton's own words for a full queue, so clients treat both alike
                f"Exceeds maximum queue size: {len(self.pending)} requests are already waiting to join "
                "the decoding batch; retry later"
            )
        wait = self._refuse_a_late_answer(len(items), settings, timeout_s)
        self.pending.append(_Request(key, list(items), settings, self.clock(), cancelled, timeout_s, 0, wait))
        self.known.add(key)

    def step(self) -> dict[Hashable, Result]:
        """Shed, admit, and advance every cohort by one step; returns the requests answered in this step."""
        answered: dict[Hashable, Result] = {}
        self._shed(answered)
        self._cancel(answered)
        self._admit(answered)
        started, stepping, passes = self.clock(), len(self.cohorts), self.passes
        if self.busy_since is not None:  # the server ran this step as soon as it could: the gap is its cost
            self.forecast.observe_gap(started - self.busy_since)
        self._advance(answered)
        ended, passes = self.clock(), self.passes - passes
        if stepping:  # what a step costs at this load (no passes: the searches ran their own, one each)
            self.forecast.observe_step(ended - started, stepping, passes or stepping, self.merging)
        self.known -= answered.keys()
        # Requests left in flight are rescheduled at once; otherwise the next step waits for an arrival.
        self.busy_since = ended if self.known else None
        return answered

    # -- admission ----------------------------------------------------------------------------------------
    def _refuse_a_late_answer(
        self, rows: int, settings: GenerationSettings, timeout_s: float
    ) -> float | None:
        """Raises ServerBusy if the request is forecast to answer late; else returns its forecast wait."""
        forecast, limit = self.forecast, self.limits.queue_timeout_s
        running = [(forecast.steps_left(c.done, c.least, c.most), c.rows) for c in self.cohorts]
        waiting = [(len(r.items), forecast.steps_left(0, *_bounds(r.settings))) for r in self.pending]
        waiting.append((rows, forecast.steps_left(0, *_bounds(settings))))
        predicted = forecast.wait_s(self.limits.max_rows, running, waiting)
        if predicted is None:
            return None
        wait, took = predicted
        if limit and wait > HEADROOM * limit:
            raise ServerBusy(
                f"Exceeds the queue timeout: a request arriving now would wait about {wait:.1f} s to join the "
                f"decoding batch (limit {limit:g} s, of which {HEADROOM:.0%} is admitted; forecast from the "
                "steps timed at this load); retry later"
            )
        if timeout_s and wait + took > HEADROOM * timeout_s:
            raise ServerBusy(
                f"Exceeds the request's timeout: it would wait about {wait:.1f} s and decode about {took:.1f} s, "
                f"past {HEADROOM:.0%} of its timeout of {timeout_s:g} s (forecast from the steps timed at this "
                "load); retry later"
            )
        free, joining = self.limits.max_rows - self.running_rows, 0
        for rows_ahead, _ in waiting:  # those that join at the next step, each a cohort at worst
            if rows_ahead > free:
                return wait  # it joins only as others leave, which does not add to the load
            free, joining = free - rows_ahead, joining + 1
        if self._slows_past_timeouts(len(self.cohorts) + joining):
            raise ServerBusy(_SLOWS_OTHERS)
        return wait

    def _shed(self, answered: dict) -> None:
        timeout = self.limits.queue_timeout_s
        if not timeout:
            return
        now = self.clock()
        for request in [r for r in self.pending if not r.admitted and now - r.arrived > timeout]:
            self.pending.remove(request)
            self._observe_wait(request, now)
            answered[request.key] = ServerBusy(
                f"Request timeout expired: waited {now - request.arrived:.1f} s to join the decoding "
                f"batch (limit {timeout:g} s)"
            )

    def _admit(self, answered: dict) -> None:
        free = self.limits.max_rows - self.running_rows
        joining: dict[GenerationSettings, list[_Request]] = {}
        now = self.clock()
        while self.pending and len(self.pending[0].items) <= free:  # in arrival order: no overtaking
            request = self.pending.popleft()
            self._observe_wait(request, now)
            free -= len(request.items)
            joining.setdefault(request.settings, []).append(request)
        self._refuse_late_joiners(joining, answered)
        for settings, requests in joining.items():
            if not requests:
                continue
            items = []
            for request in requests:
                request.offset = len(items)
                items += request.items
            try:
                steps = self.start(items, settings)
            except Exception as exc:  # e.g. the encoder failed: these requests only
                LOG.exception("starting a cohort of %d requests failed", len(requests))
                answered.update((r.key, exc) for r in requests)
                continue
            least, most = _bounds(settings)
            self.cohorts.append(_Cohort(requests, steps, {r.key for r in requests}, least, most))
        if joining:
            LOG.debug("admitted %d requests; %d rows decoding", len(joining), self.running_rows)

    def _observe_wait(self, request: _Request, now: float) -> None:
        if request.forecast_wait_s is not None:
            self.forecast.observe_wait(request.forecast_wait_s, now - request.arrived)

    def _refuse_late_joiners(self, joining: dict[GenerationSettings, list[_Request]], answered: dict) -> None:
        """A request about to join that can no longer finish within its own timeout, at the load it would join,
        is refused now, before it costs a step: the load may have grown since it arrived."""
        now, cohorts = self.clock(), len(self.cohorts) + len(joining)
        for settings, requests in joining.items():
            took = self.forecast.decode_s(self.forecast.steps_left(0, *_bounds(settings)), cohorts)
            if took is None:
                return
            for request in [r for r in requests if r.timeout_s and now - r.arrived + took > r.timeout_s]:
                requests.remove(request)
                answered[request.key] = ServerBusy(
                    f"Exceeds the request's timeout: it waited {now - request.arrived:.1f} s and would decode "
                    f"about {took:.1f} s, past its timeout of {request.timeout_s:g} s (forecast from the steps "
                    "timed at this load); retry later"
                )
        groups = [requests for requests in joining.values() if requests]
        while groups and self._slows_past_timeouts(len(self.cohorts) + len(groups)):
            group = groups.pop()
            for request in [r for r in group if not r.admitted]:  # the latest to arrive give way
                joining[request.settings].remove(request)
                answered[request.key] = ServerBusy(_SLOWS_OTHERS)
            if any(r.admitted for r in group):
                break  # an admitted request joins whatever it costs the others

    def _slows_past_timeouts(self, cohorts: int) -> bool:
        """Whether stepping `cohorts` cohorts would make more running requests finish past their own timeouts
        than stepping the cohorts running now: a request may join only if those already decoding still finish
        in time, so under overload the engine stays at the load its requests' timeouts allow."""
        now, forecast = self.clock(), self.forecast

        def late(load: int) -> int:
            count = 0
            for cohort in self.cohorts:
                left = forecast.decode_s(forecast.steps_left(cohort.done, cohort.least, cohort.most), load)
                count += sum(
                    1
                    for r in cohort.requests
                    if r.key in cohort.open and r.timeout_s and left and now - r.arrived + left > r.timeout_s
                )
            return count

        return cohorts > len(self.cohorts) and late(cohorts) > late(len(self.cohorts))

    def _cancel(self, answered: dict) -> None:
        now = self.clock()
        if now < self.next_cancel_check:
            return
        self.next_cancel_check = now + CANCEL_CHECK_S
        gone = GenerationCancelled("the request was cancelled")
        for request in [r for r in self.pending if r.cancelled()]:
            self.pending.remove(request)
            answered[request.key] = gone
        for cohort in self.cohorts:
            for request in cohort.requests:
                if request.key in cohort.open and request.cancelled():
                    cohort.open.discard(request.key)
                    answered[request.key] = gone

    # -- decoding -----------------------------------------------------------------------------------------
    def _advance(self, answered: dict) -> None:
        """One step of every cohort: each runs to its forward step, all forward steps are answered together,
        and each runs on to its progress."""
        for cohort in list(self.cohorts):
            if cohort.open and cohort.call is None:
                self._send(cohort, None, answered)
        waiting = [c for c in self.cohorts if c.open and c.call is not None]
        self.merging = self.merging or (self.merge and any(merges(c.call) for c in waiting))
        results, passes = run_calls([c.call for c in waiting], self.merge)
        self._count(len(waiting), passes)
        for cohort, result in zip(waiting, results, strict=True):
            cohort.call = None
            if isinstance(result, Exception):  # its forward step failed: this cohort only
                LOG.error("a decode step failed for %d requests: %s", len(cohort.open), result)
                self._fail(cohort, result, answered)
            else:
                self._send(cohort, result, answered)
        for cohort in [c for c in self.cohorts if not c.open]:  # everyone answered: stop computing its rows
            cohort.steps.close()  # type: ignore[attr-defined]
            if cohort.finished:
                self.forecast.observe_cohort(cohort.done, cohort.most)
            self.cohorts.remove(cohort)

    def _count(self, steps: int, passes: int) -> None:
        if passes < steps and self.passes == self.cohort_steps:
            LOG.info(
                "merged the forward steps of %d cohorts into %d passes; the periodic report counts the rest",
                steps,
                passes,
            )
        self.cohort_steps += steps
        self.passes += passes
        now = self.clock()
        if self.next_report is None:
            self.next_report = now + REPORT_S
        elif now >= self.next_report:
            self.next_report = now + REPORT_S
            LOG.info(
                "in flight: %d cohort steps in %d forward passes so far; %d rows decoding, %d requests waiting",
                self.cohort_steps,
                self.passes,
                self.running_rows,
                len(self.pending),
            )

    def _send(self, cohort: _Cohort, value: object, answered: dict) -> None:
        """Run the cohort's search to its next forward step (kept in `cohort.call`) or its next progress."""
        try:
            item = cohort.steps.send(value)  # type: ignore[attr-defined]
        except StopIteration as stop:
            for request in cohort.requests:
                if request.key in cohort.open:
                    answered[request.key] = stop.value[request.offset : request.offset + len(request.items)]
            cohort.open.clear()
            cohort.finished = True
            return
        except Exception as exc:  # a failed step fails its cohort only
            LOG.exception("a decode step failed for %d requests", len(cohort.open))
            self._fail(cohort, exc, answered)
            return
        if isinstance(item, StepCall):
            cohort.call = item
            return
        progress: Progress = item  # type: ignore[assignment]
        cohort.done += 1
        for request in cohort.requests:
            rows = range(request.offset, request.offset + len(request.items))
            if request.key in cohort.open and all(progress.done[i] for i in rows):
                answered[request.key] = [progress.output(i) for i in rows]
                cohort.open.discard(request.key)
                cohort.finished = not cohort.open

    @staticmethod
    def _fail(cohort: _Cohort, exc: Exception, answered: dict) -> None:
        answered.update((key, exc) for key in cohort.open)
        cohort.open.clear()


def _bounds(settings: GenerationSettings) -> tuple[int, int]:
    """The least and most new tokens (decode steps) a cohort with these settings takes."""
    prompt = len(settings.prompt_ids)
    return max(0, settings.min_length - prompt), max(0, settings.max_length - prompt)
