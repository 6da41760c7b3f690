"""Triton glue of the door (captioning/runtime/door.py): open a ticket where a request enters, carry it through
the stages, close it where the request is answered.

A stage holding an admitted request does not shed it by its own forecast (it was admitted for the whole
pipeline); it stops working on it when its client cancels or its stop time passes (its client has gone).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning import contract
from captioning.backend.triton_utils import cancelled, run_rows, timeout_s
from captioning.runtime import door
from captioning.runtime.inflight import ServerBusy
from captioning.runtime.ledger import Ledger, ledger_path

LOG = logging.getLogger(__name__)
NO_TICKET = -1


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: int
    stop_at: float  # wall-clock seconds
    last: bool  # this stage answers the client


def door_limits(parameters: Mapping[str, str]) -> door.DoorLimits | None:
    """The door's limits from a model's parameters; None where the door is off (no budget)."""
    budget = float(parameters.get(contract.PARAM_LATENCY_BUDGET_S, "0") or 0)
    if budget <= 0:
        return None
    return door.DoorLimits(
        budget_s=budget,
        warmup=int(parameters.get(contract.PARAM_ADMISSION_WARMUP, contract.MAX_BATCH_SIZE)),
        cap=int(parameters.get(contract.PARAM_ADMISSION_CAP, contract.MAX_QUEUE_SIZE)),
    )


def read_ticket(request) -> Ticket | None:
    """The ticket an ensemble handed this stage, if any (None: a direct request, or the door is off)."""
    for name, last in ((contract.LAST_TICKET, True), (contract.TICKET, False)):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        if tensor.is_cpu():
            values = np.asarray(tensor.as_numpy()).reshape(-1)
        else:  # GPU repositories may hand inputs over in device memory
            from torch.utils.dlpack import from_dlpack

            values = from_dlpack(tensor.to_dlpack()).cpu().numpy().reshape(-1)
        if values.size < 2 or int(values[0]) == NO_TICKET:
            return None
        return Ticket(int(values[0]), int(values[1]) / 1000.0, last)
    return None


def ticket_tensor(ticket: Ticket | None, rows: int) -> pb_utils.Tensor:
    value = [NO_TICKET, 0] if ticket is None else [ticket.id, int(ticket.stop_at * 1000)]
    return pb_utils.Tensor(contract.TICKET, np.array([value] * rows, dtype=np.int64))


class TicketDesk:
    """One model's side of the door: `opens` (the door's limits) where requests enter here."""

    def __init__(self, opens: door.DoorLimits | None = None, scope: int | None = None, clock=time.time):
        self.limits, self.scope, self.clock = opens, scope, clock
        self._ledger: Ledger | None = None
        self.held: dict[Hashable, Ticket] = {}

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(ledger_path(self.scope))
        return self._ledger

    def enter(self, request, rows: int) -> Ticket | None:
        """Admit a request arriving here; ServerBusy (UNAVAILABLE) when the pipeline would answer it late."""
        if self.limits is None:
            return None
        with self.ledger.state() as state:
            verdict = door.admit(state, self.limits, self.clock(), timeout_s(request), rows)
        if not verdict.admitted:
            raise ServerBusy(verdict.message)
        return Ticket(verdict.ticket, verdict.stop_at, last=True)

    def check_in(self, key: Hashable, request, rows: int = 1, enters: bool = False) -> Ticket | None:
        """The request's ticket: the ensemble's, or (`enters`: a request entering here) a new one."""
        ticket = read_ticket(request)
        if ticket is None and enters:
            ticket = self.enter(request, rows)
        if ticket is not None:
            self.held[key] = ticket
        return ticket

    def cancelled(self, key: Hashable, request) -> Callable[[], bool]:
        """Whether to stop working on the request: its client cancelled, or its ticket's stop time passed."""
        base, ticket = cancelled(request), self.held.get(key)
        if ticket is None:
            return base
        return lambda: base() or self.clock() > ticket.stop_at

    def timeout_s(self, key: Hashable, request) -> float:
        """The timeout a stage's own shedding should hold the request to: none once the door admitted it."""
        return 0.0 if key in self.held else timeout_s(request)

    def check_out(self, key: Hashable, response) -> None:
        """After a response: the answering stage closes the ticket; any stage that fails the request does."""
        if response is None or key not in self.held:  # not answered in this execution (rescheduled)
            return
        ticket = self.held.pop(key)
        failed = response.has_error()
        if ticket.last or failed:
            self.close(ticket.id, answered=not failed)

    def close(self, ticket: int, answered: bool) -> None:
        try:
            with self.ledger.state() as state:
                door.close(state, ticket, self.clock(), answered)
        except OSError:  # never fail a request over the ledger; the ticket expires at its stop time
            LOG.exception("could not close door ticket %d", ticket)


def run_admitted(
    desk: TicketDesk,
    requests: Sequence,
    parse: Callable,
    run: Callable,
    build: Callable,
    enters: Callable[[object], int] = lambda request: 0,
) -> list:
    """`run_rows` for a batching stage that holds tickets: `enters(request)` gives the rows of a request that
    enters the pipeline here (0: it does not), which the door admits or refuses before any work."""
    refused: dict[int, Exception] = {}
    for request in requests:
        try:
            rows = enters(request)
            desk.check_in(id(request), request, rows, enters=rows > 0)
        except (ServerBusy, ValueError) as exc:
            refused[id(request)] = exc

    def checked(request):
        if id(request) in refused:
            raise refused[id(request)]
        return parse(request)

    responses = run_rows(
        requests, checked, run, build, cancelled_of=lambda request: desk.cancelled(id(request), request)
    )
    for request, response in zip(requests, responses, strict=True):
        desk.check_out(id(request), response)
    return responses
