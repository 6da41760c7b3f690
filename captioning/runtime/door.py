"""Admission at the door: a request to a public entry is admitted or refused once, on arrival, from a forecast
of when the whole pipeline would answer it (docs/reliability.md, "Admission at the door").

Each stage bounding its own queue is not enough: under a burst the first stages admit work that a later stage
then sheds, or finishes after its client has gone, and useful answers drop to zero. The door instead measures
the pipeline end to end. Every admitted request holds a *ticket* until the stage that answers it (or fails
it) closes the ticket; the open tickets are exactly the work ahead of a new request in every stage. Each
answer records its load (the most rows open while it was in the pipeline, its own included) and how long it
took, so all stages' costs, their batching and their contention for the same cores are in it. The load is
the peak, not the rows open on arrival: requests that arrive together in one batch finish together, and at
their arrival loads (1, 2, ... 16) they would teach a flat line that no smaller load is faster. A new request
is forecast to take what the line through the recent answers gives at its load, plus how far above the line
the slowest tenth of them lay, and is admitted only if that is within HEADROOM of its deadline: its own
`timeout` or the server's latency budget.

While the recent answers are too few or their loads too close together for a line (a closed loop at one
concurrency), each row open is taken to cost what the slowest answer's rows did, one after another
(`bound_s`); below one batch's worth of rows (`warmup`) the door also explores loads no answer has seen yet:
at start-up a burst then costs refusals, not timeouts, and a door that served one request at a time goes on
to learn what a fuller pipeline costs (a throughput measured at a low load would hold it at that load for
good: batching makes throughput grow with load). An empty pipeline always admits, so stale figures never
close the door. A ticket also ends at its stop time (its deadline, or twice the budget for a request without
one), so work a crashed stage lost is not counted forever.

Plain data in and out (`DoorState` is JSON), so the stage processes can share it through `runtime.ledger`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

HEADROOM = 0.75  # a forecast made while the pipeline fills misses the slowdown the filling brings
RECENT = 32  # answers the latency is fitted over
MIN_FIT = 8  # answers before latency is fitted to the load
# Loads at least this far apart (rows, and share of the largest) before a line is fitted: answers at nearly one
# load (a closed loop) give a slope of noise, and a flat line there would say that no smaller load is faster.
MIN_RANGE_ROWS, MIN_RANGE_SHARE = 2, 0.25
HIGH_LOAD_SHARE = 0.5  # answers at least at this share of the highest load give the bound's cost per row
TAIL = 0.9  # the share of recent answers the forecast covers
NO_DEADLINE_FACTOR = 2.0  # a request without a timeout is worked on for at most this many budgets

REFUSED = "Exceeds the request's timeout"  # the words the SDK's ServerBusyError already recognises


@dataclasses.dataclass
class Verdict:
    admitted: bool
    ticket: int = -1
    stop_at: float = 0.0  # wall-clock seconds after which its client has gone (stages stop working on it)
    forecast_s: float | None = None
    message: str = ""


@dataclasses.dataclass
class DoorState:
    """Everything the door knows, as JSON-able fields (one copy per server, in the ledger file)."""

    next_ticket: int = 1
    # id -> [admitted, stop, forecast, rows, most rows open while it is open]: rows are the images (or texts) a
    # request carries, the unit of work
    open: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    loads: list[list[float]] = dataclasses.field(default_factory=list)  # [its load, its latency]
    admitted: int = 0
    refused: int = 0
    answered: int = 0
    expired: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DoorState:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- measurements ------------------------------------------------------------------------------------
    def rows_open(self) -> int:
        return int(sum(entry[3] for entry in self.open.values()))

    def load_line(self) -> tuple[float, float] | None:
        """(s, s per row): latency against load, least squares over the recent answers; None while they are
        too few or their loads too close together."""
        if len(self.loads) < MIN_FIT:
            return None
        count = len(self.loads)
        low, high = min(n for n, _ in self.loads), self.max_load()
        if high - low < max(MIN_RANGE_ROWS, MIN_RANGE_SHARE * high):
            return None
        mean_n = sum(n for n, _ in self.loads) / count
        mean_t = sum(t for _, t in self.loads) / count
        spread = sum((n - mean_n) ** 2 for n, _ in self.loads)
        slope = max(0.0, sum((n - mean_n) * (t - mean_t) for n, t in self.loads) / spread)
        return max(0.0, mean_t - slope * mean_n), slope

    def max_load(self) -> float:
        return max((n for n, _ in self.loads), default=0.0)

    def spread_s(self, line: tuple[float, float]) -> float:
        """How far above the line the slow tenth of the recent answers lay: the forecast is of the tail, not
        the mean, since a request answered late is as lost as one refused."""
        over = sorted(t - (line[0] + line[1] * n) for n, t in self.loads)
        return max(0.0, over[min(len(over) - 1, math.ceil(TAIL * len(over)) - 1)])

    def forecast_s(self, ahead: int, rows: int = 1) -> float | None:
        """Seconds until `rows` admitted behind `ahead` open rows are answered; None while no line is known."""
        line = self.load_line()
        if line is None:
            return None
        return line[0] + line[1] * (ahead + rows) + self.spread_s(line)

    def bound_s(self, ahead: int, rows: int = 1) -> float | None:
        """While no line is known: every row costing what the slowest row of the answers at the higher loads
        did (at least half the highest), as if nothing beyond ran at once; None before any answer. Rows at low
        loads cost more (less batching): counting them would hold a door that once served one request at a
        time at that load for good."""
        if not self.loads:
            return None
        high = HIGH_LOAD_SHARE * self.max_load()
        return max(t / max(n, 1) for n, t in self.loads if n >= high) * (ahead + rows)


@dataclasses.dataclass(frozen=True)
class DoorLimits:
    budget_s: float  # the deadline of a request that sends none
    warmup: int  # rows admitted while no line is known
    cap: int  # open rows at most: what the inner stages' queues can hold without shedding


def expire(state: DoorState, now: float) -> None:
    for key in [k for k, entry in state.open.items() if entry[1] < now]:
        del state.open[key]
        state.expired += 1


def admit(state: DoorState, limits: DoorLimits, now: float, timeout_s: float = 0.0, rows: int = 1) -> Verdict:
    """Admit or refuse one request of `rows` rows arriving at `now` (wall-clock seconds) with its own
    timeout (0: none)."""
    expire(state, now)
    deadline = timeout_s or limits.budget_s
    whose = (
        f"its timeout of {timeout_s:g} s" if timeout_s else f"the server's latency budget of {deadline:g} s"
    )
    ahead = state.rows_open()
    forecast = state.forecast_s(ahead, rows)
    reason = ""
    if ahead and ahead + rows > limits.cap:
        reason = f"{ahead} rows are already in the pipeline and its queues hold {limits.cap}"
    elif forecast is None and ahead and not _fits(state, ahead, rows, deadline):
        reason = _unfitted(state, limits, ahead, rows, whose)
    elif ahead and forecast is not None and forecast > HEADROOM * deadline:
        reason = (
            f"it would be answered in about {forecast:.1f} s behind the {ahead} rows in the pipeline, "
            f"past {HEADROOM:.0%} of {whose} (forecast from the answers timed at this load)"
        )
    if reason:
        state.refused += 1
        return Verdict(False, forecast_s=forecast, message=f"{REFUSED}: {reason}; retry later")
    ticket = state.next_ticket
    state.next_ticket += 1
    stop = now + (timeout_s or NO_DEADLINE_FACTOR * limits.budget_s)
    state.open[str(ticket)] = [now, stop, forecast or 0.0, rows, ahead + rows]
    for entry in state.open.values():  # every open request now shares the pipeline with these rows
        entry[4] = max(entry[4], ahead + rows)
    state.admitted += 1
    return Verdict(True, ticket, stop, forecast)


def _unfitted(state: DoorState, limits: DoorLimits, ahead: int, rows: int, whose: str) -> str:
    """Why a request is refused while no line is known ("" to admit it): below one batch a load no answer has
    seen yet is explored; any other needs the bound to fit."""
    load = ahead + rows
    if load <= limits.warmup and load > state.max_load():
        return ""
    bound = state.bound_s(ahead, rows)
    if bound is None or load > limits.warmup and load > state.max_load():
        return (
            f"{ahead} rows are in the pipeline and too few answers at different loads have been timed "
            f"to admit more than {limits.warmup}"
        )
    return (
        f"it could take {bound:.1f} s behind the {ahead} rows in the pipeline, past {HEADROOM:.0%} of "
        f"{whose} (bound from the answers timed at up to this load)"
    )


def _fits(state: DoorState, ahead: int, rows: int, deadline: float) -> bool:
    bound = state.bound_s(ahead, rows)
    return bound is not None and bound <= HEADROOM * deadline


def close(state: DoorState, ticket: int, now: float, answered: bool = True) -> None:
    """The stage that answered (or failed) the request gives its ticket back. A failed request is not
    measured: a fault's speed says nothing about the pipeline's."""
    entry = state.open.pop(str(ticket), None)
    if entry is None:  # expired, or closed twice: nothing to measure
        return
    admitted_at, _, _, _, load = entry
    if answered:
        state.answered += 1
        _push(state.loads, [load, now - admitted_at], RECENT)


def _push(values: list, value: Any, keep: int) -> None:
    values.append(value)
    del values[:-keep]
