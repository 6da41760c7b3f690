"""The door's forecast against fake pipelines whose costs are known: it admits exactly what fits."""

from __future__ import annotations

import heapq
import multiprocessing
import re

import pytest

from captioning.runtime import door
from captioning.runtime.ledger import Ledger

LIMITS = door.DoorLimits(budget_s=10.0, warmup=4, cap=1000)


def _measured(rate: float) -> door.DoorState:
    """A state that has timed the answers of a saturated pipeline answering `rate` rows/s: a request admitted
    with n rows open (its own included) took n / rate seconds."""
    state = door.DoorState()
    state.loads = [[n, n / rate] for n in range(1, 17)]
    return state


def _fill(state: door.DoorState, count: int, now: float = 0.0) -> None:
    for _ in range(count):
        assert door.admit(state, door.DoorLimits(1e9, 10**6, 10**6), now).admitted


@pytest.mark.parametrize(("rate", "budget"), [(2.0, 10.0), (0.5, 30.0), (8.0, 3.0)])
def test_admits_exactly_the_requests_answered_within_the_headroom(rate, budget):
    limits = door.DoorLimits(budget_s=budget, warmup=4, cap=1000)
    fits = int(door.HEADROOM * budget * rate) - 1  # open rows with which (open + 1) / rate still fits
    state = _measured(rate)
    _fill(state, fits)
    assert door.admit(state, limits, 0.0).admitted  # the last that fits
    verdict = door.admit(state, limits, 0.0)
    assert not verdict.admitted and verdict.forecast_s > door.HEADROOM * budget
    assert verdict.message.startswith(door.REFUSED) and "latency budget" in verdict.message


def test_latency_fitted_to_the_load_admits_exactly_what_fits():
    """A batching pipeline whose latency is 1 s plus 0.2 s per row open: the door learns the line from the
    answers at several loads and, with a 10 s budget (7.5 s admitted), admits up to 32 open rows."""
    state = door.DoorState()
    state.loads = [[n, 1.0 + 0.2 * n] for n in range(1, 17)]
    assert state.load_line() == pytest.approx((1.0, 0.2))
    _fill(state, 31)
    assert door.admit(state, LIMITS, 0.0).admitted  # 1 + 0.2 * 32 = 7.4 s
    verdict = door.admit(state, LIMITS, 0.0)
    assert not verdict.admitted and verdict.forecast_s == pytest.approx(7.6)


def test_answers_record_the_most_rows_open_while_they_were_in_the_pipeline():
    state = door.DoorState()
    tickets = [door.admit(state, LIMITS, 0.0).ticket for _ in range(3)]
    door.close(state, tickets[0], 1.0)
    door.admit(state, LIMITS, 1.0)  # 3 open again: the two still open had 3 at most
    for t, ticket in enumerate(tickets[1:]):
        door.close(state, ticket, 2.0 + t)
    assert state.loads == [[3, 1.0], [3, 2.0], [3, 3.0]]


def test_answers_at_nearly_one_load_draw_no_line():
    state = door.DoorState()
    state.loads = [[15 + n % 2, 20.0 + n % 3] for n in range(door.RECENT)]  # a closed loop at concurrency 16
    assert state.load_line() is None
    assert state.bound_s(0, 8) == pytest.approx(22.0 / 15 * 8)


def test_the_request_timeout_is_its_deadline():
    state = _measured(rate=2.0)
    _fill(state, 5)  # the sixth is forecast at 3 s
    assert not door.admit(state, LIMITS, 0.0, timeout_s=3.9).admitted  # 3 > 0.75 * 3.9
    verdict = door.admit(state, LIMITS, 0.0, timeout_s=4.1)
    assert verdict.admitted and verdict.stop_at == pytest.approx(4.1)


def test_rows_are_the_unit_of_work():
    state = _measured(rate=2.0)
    _fill(state, 10)  # (10 + rows) / 2 <= 7.5 admits at most 5 rows
    assert not door.admit(state, LIMITS, 0.0, rows=6).admitted
    assert door.admit(state, LIMITS, 0.0, rows=5).admitted


def test_before_the_first_answer_one_batch_is_admitted_and_the_rest_refused_at_once():
    state = door.DoorState()
    for _ in range(LIMITS.warmup):
        assert door.admit(state, LIMITS, 0.0).admitted
    verdict = door.admit(state, LIMITS, 0.0)
    assert not verdict.admitted and "too few answers" in verdict.message


def test_answers_all_at_one_load_teach_nothing_so_the_door_explores_up_to_a_batch():
    state = door.DoorState()
    state.loads = [[1, 50.0]] * door.RECENT  # served one at a time, each slowly: no line through one load
    assert state.forecast_s(0) is None
    assert [door.admit(state, LIMITS, 0.0).admitted for _ in range(5)] == [True] * 4 + [False]
    # beyond the batch, a deadline that holds even if the 5 rows ran one after another at 50 s each
    assert not door.admit(state, LIMITS, 0.0, timeout_s=300.0).admitted  # 250 s > 225 s
    assert door.admit(state, LIMITS, 0.0, timeout_s=400.0).admitted


def test_an_empty_pipeline_always_admits_so_stale_figures_never_close_the_door():
    state = _measured(rate=0.001)  # far slower than any deadline
    assert door.admit(state, LIMITS, 0.0).admitted
    assert not door.admit(state, LIMITS, 0.0).admitted


def test_the_cap_holds_whatever_the_forecast():
    limits = door.DoorLimits(budget_s=1e6, warmup=100, cap=3)
    state = _measured(rate=100.0)
    assert [door.admit(state, limits, 0.0).admitted for _ in range(4)] == [True, True, True, False]


def test_a_lost_ticket_expires_at_its_stop_time():
    state = door.DoorState()
    verdict = door.admit(state, LIMITS, 0.0)  # no timeout: stopped after twice the budget
    assert verdict.stop_at == pytest.approx(door.NO_DEADLINE_FACTOR * LIMITS.budget_s)
    door.expire(state, verdict.stop_at + 0.1)
    assert not state.open and state.expired == 1


def test_failures_close_their_ticket_without_being_measured():
    state = door.DoorState()
    verdict = door.admit(state, LIMITS, 0.0)
    door.close(state, verdict.ticket, 5.0, answered=False)
    assert not state.open and not state.loads


def test_the_forecast_covers_the_slow_tenth_above_the_line():
    state = _measured(rate=2.0)
    before = state.forecast_s(5)
    state.loads += [[8, 4.0 + 3.0]] * 4  # 4 of 20 answers 3 s above the line
    line = state.load_line()
    assert state.spread_s(line) > 2.0 and state.forecast_s(5) > before + 2.0


def test_the_refusal_is_what_the_sdk_calls_server_busy():
    from captioning.client.errors import ServerBusyError, from_triton_exception

    class Refusal(Exception):
        def status(self):
            return "StatusCode.UNAVAILABLE"

        def message(self):
            return door.admit(state, LIMITS, 0.0).message

    state = door.DoorState()
    _fill(state, LIMITS.warmup)
    assert isinstance(from_triton_exception(Refusal()), ServerBusyError)


def _simulate_burst(
    clients: int, per_client: int, service_s: float, batch: int, deadline_s: float, state=None
):
    """A pipeline that answers a batch of up to `batch` rows every `service_s` seconds, FIFO, and closed-loop
    clients that send their next request as soon as the last is answered or refused (never retrying)."""
    limits = door.DoorLimits(budget_s=deadline_s, warmup=batch, cap=1000)
    state = door.DoorState() if state is None else state
    queue, sent = [], dict.fromkeys(range(clients), 0)
    events = [(0.0, c) for c in range(clients)]  # (time a client sends, client)
    heapq.heapify(events)
    answers, refused_late, free_at, outcomes = [], 0, 0.0, []
    while events or queue:
        if events and (not queue or events[0][0] <= free_at):
            now, client = heapq.heappop(events)
            if sent[client] == per_client:
                continue
            sent[client] += 1
            verdict = door.admit(state, limits, now)
            if verdict.admitted:
                queue.append((now, client, verdict.ticket))
            else:
                outcomes.append("refused")
                heapq.heappush(events, (now, client))
            continue
        start = max(free_at, queue[0][0])
        done, queue = queue[:batch], queue[batch:]
        free_at = start + service_s
        for arrived, client, ticket in done:
            door.close(state, ticket, free_at)
            late = free_at - arrived > deadline_s
            refused_late += late
            answers.append(free_at)
            outcomes.append("late" if late else "ok")
            heapq.heappush(events, (free_at, client))
    return outcomes, answers


def test_a_burst_far_over_capacity_keeps_goodput_near_capacity_and_no_answer_late():
    capacity = 8 / 4.0  # rows per second: a batch of 8 every 4 s
    outcomes, answers = _simulate_burst(clients=96, per_client=3, service_s=4.0, batch=8, deadline_s=30.0)
    assert len(outcomes) == 96 * 3 and "late" not in outcomes
    goodput = outcomes.count("ok") / answers[-1]
    assert goodput >= 0.6 * capacity, (goodput, capacity)


def test_after_a_closed_loop_slower_than_the_headroom_a_burst_is_still_served_near_capacity():
    """Measured closed-loop at concurrency 16, a pipeline of 4-row batches every 4.5 s answered each request in
    18 s, past 75% of a 20 s budget. By the loads they arrived at (13 to 16: the answered four come back
    together) those answers draw a flat line, no smaller load looks faster, and the door would admit one
    request at a time (a quarter of capacity). By their peak loads no line is drawn yet, the bound admits what
    fits, and the answers at lower loads that follow teach the line."""
    state = door.DoorState()
    _simulate_burst(clients=16, per_client=6, service_s=4.5, batch=4, deadline_s=1e6, state=state)
    assert state.loads and state.load_line() is None
    outcomes, answers = _simulate_burst(
        clients=96, per_client=3, service_s=4.5, batch=4, deadline_s=20.0, state=state
    )
    assert "late" not in outcomes
    goodput, capacity = outcomes.count("ok") / answers[-1], 4 / 4.5
    assert goodput >= 0.6 * capacity, (goodput, capacity)


def _admit_in_child(path, queue):
    ledger = Ledger(path)
    with ledger.state() as state:
        queue.put(door.admit(state, LIMITS, 0.0).ticket)


def test_the_ledger_is_shared_by_the_processes_of_one_server(tmp_path):
    path = tmp_path / "ledger.json"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_admit_in_child, args=(path, queue))
    child.start()
    ticket = queue.get(timeout=60)
    child.join(timeout=60)
    ledger = Ledger(path)
    with ledger.state() as state:
        assert list(state.open) == [str(ticket)]
        door.close(state, ticket, 1.0)
    with ledger.state() as state:
        assert not state.open and state.answered == 1 and state.loads == [[1, 1.0]]
    path.write_bytes(b'{"open": {"1": [0, ')  # a torn write: measured afresh, not a crash
    with ledger.state() as state:
        assert state.open == {}
    assert re.fullmatch(r"\{.*\}", path.read_text())
