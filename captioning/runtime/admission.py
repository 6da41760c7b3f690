"""Forecast of how long a request would wait to join an in-flight stage and then decode, so that a request
that would only time out in the queue, or finish after its own timeout, is refused at once
(docs/reliability.md) instead of being shed late or decoded for a client that has gone.

It is measured, not configured: what one cohort's step costs (every engine step is timed and divided by the
cohorts it advanced: each its own graph call on the ONNX graphs; on the torch runner, where cohorts share one
forward pass, the average, which overstates what one more cohort adds, so the forecast errs towards refusing),
the gap between two steps (Triton rescheduling every request in flight and the stub's round trip: with small
models, as much as the step itself), and the share of its most steps a cohort takes (end of sequence often comes
early). The forecast then replays the queue: each running
cohort frees its rows when its steps left are done, the waiting requests join in arrival order as rows free,
and every step costs as many cohort steps as cohorts would run, counting each waiting request as a cohort of its
own (the worst case).

What the replay misses (a step costs more as the requests in flight grow, after a request was forecast) is
measured too: each request that waited is compared with its forecast, and later forecasts are scaled by the
most a recent wait outlasted its forecast (never shortened), so the forecast corrects itself under the load it
serves, tail included. The engine also checks a waiter again when it would join.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

SMOOTHING = 0.3  # weight of the newest measurement in the running estimates
MIN_FORECAST_S = 0.5  # waits forecast shorter than this do not correct the forecast
MAX_BIAS = 4.0  # one stalled wait (a reload, a pause) does not refuse everything after it
RECENT_WAITS = 32  # the forecast's correction is the worst of this many recent waits


def _smoothed(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


class WaitForecast:
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self.cohort_step_s: float | None = None  # one step of one cohort; None before a step was timed
        self.gap_s: float | None = None  # from the end of one step to the start of the next, while busy
        self.share = 1.0  # steps a finished cohort took over its most; starts at the cautious end
        self.ratios: deque[float] = deque(maxlen=RECENT_WAITS)  # recent waits over their forecasts

    def observe_step(self, seconds: float, cohorts: int) -> None:
        """Record how long an engine step took to advance `cohorts` cohorts."""
        if cohorts > 0:
            self.cohort_step_s = _smoothed(self.cohort_step_s, seconds / cohorts, self.smoothing)

    def observe_gap(self, seconds: float) -> None:
        """Record the time between a step that left requests in flight and the next step."""
        self.gap_s = _smoothed(self.gap_s, seconds, self.smoothing)

    def observe_wait(self, forecast_s: float, waited_s: float) -> None:
        """Record how long a request waited to join (or to be shed) against its forecast wait."""
        if forecast_s >= MIN_FORECAST_S:  # a ratio of near-zero waits is noise
            self.ratios.append(waited_s / forecast_s)

    @property
    def bias(self) -> float:
        """How much longer than forecast recent requests waited, at worst: at least 1, at most MAX_BIAS."""
        return min(MAX_BIAS, max([1.0, *self.ratios]))

    def _step_s(self, cohorts: int) -> float:
        assert self.cohort_step_s is not None
        return (self.cohort_step_s * max(1, cohorts) + (self.gap_s or 0.0)) * self.bias

    def decode_s(self, steps: float, cohorts: int) -> float | None:
        """Seconds `steps` steps take while `cohorts` cohorts step together."""
        return None if self.cohort_step_s is None else steps * self._step_s(cohorts)

    def observe_cohort(self, steps: int, most: int) -> None:
        """Record a cohort that reached its answers after `steps` of at most `most` steps."""
        if most > 0:
            self.share = _smoothed(self.share, min(1.0, steps / most), self.smoothing)

    def steps_left(self, done: int, least: int, most: int) -> float:
        """Expected steps a cohort has left, within its settings' least and most new tokens."""
        return max(0.0, min(most, max(least, self.share * most)) - done)

    def wait_s(
        self, max_rows: int, running: Sequence[tuple[float, int]], waiting: Sequence[tuple[int, float]]
    ) -> tuple[float, float] | None:
        """(seconds before it joins, seconds it then decodes) of the last of `waiting`, given the running
        cohorts as (steps left, rows) and the waiting requests as (rows, steps) in arrival order; None while no
        step was timed or when it has more rows than may ever decode."""
        if self.cohort_step_s is None or not waiting or waiting[-1][0] > max_rows:
            return None
        step_s = self._step_s(min(max_rows, len(running) + len(waiting)))
        frees = [(left * step_s, rows) for left, rows in running]
        heapq.heapify(frees)
        free, at = max_rows - sum(rows for _, rows in running), 0.0
        for rows, steps in waiting:
            while free < rows:
                finish, freed = heapq.heappop(frees)
                at, free = max(at, finish), free + freed
            free -= rows
            heapq.heappush(frees, (at + steps * step_s, rows))
        return at, waiting[-1][1] * step_s
