"""Forecast of how long a request would wait to join an in-flight stage and then decode, so that a request
that would only time out in the queue, or finish after its own timeout, is refused at once
(docs/reliability.md) instead of being shed late or decoded for a client that has gone.

It is measured, not configured: what a step costs as a function of the cohorts it advances (every engine step
is timed, `StepCost`: on the ONNX graphs each cohort is its own graph call, so a step costs a call per cohort;
on the torch runner cohorts share one forward pass whose weights are read once, so a step is a fixed part plus a
small part per cohort, fitted to the recent steps, and scaling the average per cohort would forecast a step of
sixteen cohorts at several times its cost and refuse requests the server would serve in time),
the gap between two steps (Triton rescheduling every request in flight and the stub's round trip: with small
models, as much as the step itself), and the share of its most steps a cohort takes (end of sequence often comes
early). The forecast then replays the queue: each running cohort frees its rows when its steps left are done,
the waiting requests join in arrival order as rows free, and every step costs what `StepCost` gives for the
cohorts that would run, counting each waiting request as a cohort of its own (the worst case).

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
RECENT_STEPS = 64  # the step cost is fitted over this many recent steps
MIN_FIT_STEPS = 8  # fewer, or all with one cohort count: a merged step costs one pass
MIN_FORECAST_S = 0.5  # waits forecast shorter than this do not correct the forecast
MAX_BIAS = 4.0  # one stalled wait (a reload, a pause) does not refuse everything after it
RECENT_WAITS = 32  # the forecast's correction is the worst of this many recent waits


def _smoothed(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


class StepCost:
    """Seconds a step takes to advance n cohorts. Where each cohort is its own graph call (the ONNX graphs),
    the smoothed cost of a pass times n. Where the decoder merges cohorts into one pass (the torch runner), a
    fixed part plus a part per cohort, least squares over the recent steps; until they span several counts,
    the cost of one pass."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self.pass_s: float | None = None  # smoothed seconds per forward pass; None before a step was timed
        self.merged = False  # the decoder runs the cohorts of a step in one pass
        self.steps = 0
        self.samples: deque[tuple[int, float]] = deque(maxlen=RECENT_STEPS)

    def observe(self, seconds: float, cohorts: int, passes: int, merged: bool = False) -> None:
        """The process's first step pays one-time costs (weights paged in, kernels chosen: 1.6 s against about
        0.05 s for BLIP's step on the torch runner): it stands until the second replaces it, and is not fitted."""
        if cohorts <= 0 or passes <= 0:
            return
        self.steps += 1
        self.merged = self.merged or merged or passes < cohorts
        weight = 1.0 if self.steps == 2 else self.smoothing
        self.pass_s = _smoothed(self.pass_s, seconds / passes, weight)
        if self.steps > 1:
            self.samples.append((cohorts, seconds))

    def line(self) -> tuple[float, float] | None:
        """(fixed s, per cohort s) fitted to the recent steps; None while they cannot separate the two."""
        if len(self.samples) < MIN_FIT_STEPS:
            return None
        count = len(self.samples)
        mean_n = sum(n for n, _ in self.samples) / count
        mean_t = sum(t for _, t in self.samples) / count
        spread = sum((n - mean_n) ** 2 for n, _ in self.samples)
        if spread == 0:
            return None
        slope = sum((n - mean_n) * (t - mean_t) for n, t in self.samples) / spread
        if slope < 0:  # noise over a flat cost: every step costs the mean
            return mean_t, 0.0
        fixed = mean_t - slope * mean_n
        if fixed < 0:  # noise over a cost per cohort: the line through the origin
            return 0.0, sum(n * t for n, t in self.samples) / sum(n * n for n, _ in self.samples)
        return fixed, slope

    def seconds(self, cohorts: int) -> float:
        assert self.pass_s is not None
        cohorts = max(1, cohorts)
        if not self.merged:
            return self.pass_s * cohorts
        line = self.line()
        return self.pass_s if line is None else line[0] + line[1] * cohorts


class WaitForecast:
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self.step_cost = StepCost(smoothing)
        self.gap_s: float | None = None  # from the end of one step to the start of the next, while busy
        self.share = 1.0  # steps a finished cohort took over its most; starts at the cautious end
        self.ratios: deque[float] = deque(maxlen=RECENT_WAITS)  # recent waits over their forecasts

    @property
    def pass_s(self) -> float | None:
        """The smoothed seconds of a forward pass; None before a step was timed."""
        return self.step_cost.pass_s

    def observe_step(
        self, seconds: float, cohorts: int, passes: int | None = None, merged: bool = False
    ) -> None:
        """Record how long an engine step took to advance `cohorts` cohorts in `passes` forward passes (by
        default one per cohort); `merged`: the decoder runs a step's cohorts in one pass."""
        self.step_cost.observe(seconds, cohorts, cohorts if passes is None else passes, merged)

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
        return (self.step_cost.seconds(cohorts) + (self.gap_s or 0.0)) * self.bias

    def decode_s(self, steps: float, cohorts: int) -> float | None:
        """Seconds `steps` steps take while `cohorts` cohorts step together."""
        return None if self.pass_s is None else steps * self._step_s(cohorts)

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
        if self.pass_s is None or not waiting or waiting[-1][0] > max_rows:
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
