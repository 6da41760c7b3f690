"""Triton glue of in-flight batching: one `execute` of an iterative-sequence model is one engine step.

Each request is known by its correlation id (the sequence batcher gives every iterative request its own).
A new request is parsed and submitted once; every request not answered in this step is released with
RESCHEDULE and comes back in the next execution, beside new arrivals (python_backend's request rescheduling).
The decoding and its bounds live in `captioning.runtime.inflight`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import triton_python_backend_utils as pb_utils

from captioning.backend.tickets import TicketDesk
from captioning.backend.triton_utils import error_response, respond_per_row
from captioning.runtime.inflight import InflightEngine

# TRITONSERVER_RequestFlag: the sequence batcher marks the first request of an iterative sequence START, and
# never END; a client's own sequence (a sequence_id with START/END flags, as perf_analyzer sends to any model
# over a sequence batcher) cannot be rescheduled by Triton 2.51 and would hang, so it is refused by name.
SEQUENCE_START, SEQUENCE_END = 1, 2
CLIENT_SEQUENCE = (
    "in-flight models run each request as its own sequence: send requests without sequence_id and "
    "sequence_start/sequence_end"
)


class IterativeExecutor:
    """`parse(request) -> (items, settings)` raises for a bad request (answered alone, at once);
    `build(texts) -> output tensors` makes a success response."""

    def __init__(
        self,
        engine: InflightEngine,
        parse: Callable[[Any], tuple[list, Any]],
        build: Callable[[list], list],
        desk: TicketDesk | None = None,
        enters: Callable[[Any], int] = lambda request: 0,
    ) -> None:
        self.engine, self.parse, self.build = engine, parse, build
        self.desk = desk or TicketDesk()  # the door's tickets (captioning/backend/tickets.py)
        self.enters = enters  # rows of a request entering the pipeline here (0: it came through the door)
        self.ready: dict[Hashable, Any] = {}  # answered while its request sat out an execution

    def execute(self, requests) -> list:
        responses: list = [None] * len(requests)
        index: dict[Hashable, int] = {}
        for i, request in enumerate(requests):
            key = request.correlation_id()
            index[key] = i
            if key in self.engine or key in self.ready:
                continue
            flags = request.flags() if hasattr(request, "flags") else SEQUENCE_START
            if flags & SEQUENCE_END or not flags & SEQUENCE_START:
                responses[i] = error_response(ValueError(CLIENT_SEQUENCE))
                continue
            try:
                rows = self.enters(request)
                self.desk.check_in(key, request, rows, enters=rows > 0)
                items, settings = self.parse(request)
                desk = self.desk
                self.engine.submit(
                    key,
                    items,
                    settings,
                    desk.cancelled(key, request),
                    desk.timeout_s(key, request),
                    admitted=key in desk.held,
                )
            except Exception as exc:  # bad input, or the queue is full: this request only
                responses[i] = error_response(exc)
        try:
            self.ready.update(self.engine.step())
        except Exception as exc:  # a bug in the engine: fail what is in flight, keep the model alive
            for key in list(index):
                if responses[index[key]] is None:
                    self.ready[key] = exc
        for key, i in index.items():
            if responses[i] is not None:
                continue
            if key in self.ready:
                result = self.ready.pop(key)
                if isinstance(result, BaseException):
                    responses[i] = error_response(result)
                else:
                    (responses[i],) = respond_per_row([len(result)], result, self.build)
            else:
                requests[i].set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
        for key, i in index.items():
            self.desk.check_out(key, responses[i])
        return responses
