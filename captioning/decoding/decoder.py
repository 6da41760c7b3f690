"""What decoding asks of a model: a session per batch that steps token ids to logits and reorders its cache.

The serving runtime implements it over ONNX graphs (`captioning.runtime.graphs.StepDecoder`); tests implement
it over PyTorch step functions (`CallableDecoder`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Protocol

import numpy as np

__all__ = [
    "CallableDecoder",
    "DeviceSession",
    "Decoder",
    "DecoderSession",
    "Progress",
    "StepCall",
    "Steps",
    "as_decoder",
    "drain",
    "map_steps",
    "served",
]


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a search yields after each step: which items are final, and the ids of a final item."""

    done: np.ndarray  # [B] bool
    output: Callable[[int], list[int]]


# A search run one step per `next()`, returning every item's ids when it ends (in-flight batching drives it).
Steps = Generator[Progress, None, list[list[int]]]


@dataclasses.dataclass(frozen=True)
class StepCall:
    """A search's forward step, handed to whoever drives it: `session.<method>(*args)`, answered with `send()`.

    Searches yield these instead of calling their session, so that a driver holding many searches (in-flight
    batching) can run the steps of all of them as one forward pass where their sessions allow it
    (`captioning.runtime.torch_runner.TorchStepDecoder.step_merged`); `served` answers each at once."""

    session: object
    method: str  # "step", "step_candidates" or "step_argmax"
    args: tuple

    @property
    def input_ids(self) -> np.ndarray:
        return self.args[0]

    def run(self):
        return getattr(self.session, self.method)(*self.args)


# A search that yields its forward steps (`StepCall`) as well as its progress.
Calls = Generator["Progress | StepCall", object, list[list[int]]]


def served(calls: Calls) -> Steps:
    """The same search with each forward step run at once on its own session."""
    sent = None
    while True:
        try:
            item = calls.send(sent)
        except StopIteration as stop:
            return stop.value
        if isinstance(item, StepCall):
            sent = item.run()
        else:
            sent = None
            yield item


def map_steps(steps: Generator, convert: Callable) -> Generator:
    """The same steps with every output (final or early) passed through `convert`; forward steps (`StepCall`)
    and what is sent back for them pass through untouched."""
    sent = None
    while True:
        try:
            item = steps.send(sent)
        except StopIteration as stop:
            return [convert(seq) for seq in stop.value]
        if isinstance(item, Progress):
            sent = yield Progress(item.done, lambda b, out=item.output: convert(out(b)))
        else:
            sent = yield item


def drain(steps: Steps | Calls) -> list[list[int]]:
    """Run a search to the end (its forward steps, if it yields them, at once)."""
    steps = served(steps)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


class DecoderSession(Protocol):
    """The decoder state of one `generate()` call."""

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """`input_ids` [N,T] (the prompt first, then the newest token) -> last-position logits [N,V] float32.
        N is a multiple of the sources B, rows source-major; it may change between steps (after `reorder`)."""
        ...

    def reorder(self, rows: np.ndarray) -> None:
        """Keep cache row `rows[i]` as row i (beam search; also shrinks to one row per source and back)."""
        ...


class DeviceSession(DecoderSession, Protocol):
    """A session whose logits live on a device: it can score and pick there, so that per step only what the
    search needs crosses to the host. The search uses these where `tokens.device_scoring` allows."""

    def step_candidates(self, input_ids: np.ndarray, k: int, scoring) -> tuple[np.ndarray, np.ndarray, int]:
        """Processed log-softmax's top `k` per row: (values [N,k] float32, token ids [N,k], vocabulary size)."""
        ...

    def step_argmax(self, input_ids: np.ndarray, scoring) -> np.ndarray:
        """The processed logits' argmax per row [N] (greedy search)."""
        ...


class Decoder(Protocol):
    """Starts a session for B sources decoded with `num_beams` rows each (N = B x num_beams, source-major)."""

    def start(
        self, encoder_hidden_states: np.ndarray, encoder_attention_mask: np.ndarray, num_beams: int
    ) -> DecoderSession: ...


StepFunction = Callable[
    [np.ndarray, "list[np.ndarray] | None", np.ndarray, np.ndarray], tuple[np.ndarray, list[np.ndarray]]
]


class CallableDecoder:
    """A `Decoder` over a plain step function `(input_ids, past, states, mask) -> (logits, present)` whose
    encoder inputs are per row (as `generate()` expands them); used for PyTorch references in tests."""

    def __init__(self, function: StepFunction) -> None:
        self.function = function

    def start(self, encoder_hidden_states, encoder_attention_mask, num_beams):
        return _CallableSession(self.function, encoder_hidden_states, encoder_attention_mask)


class _CallableSession:
    def __init__(self, function: StepFunction, states: np.ndarray, mask: np.ndarray) -> None:
        self.function, self.states, self.mask = function, states, mask
        self.past: list[np.ndarray] | None = None

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        rows_per_source = input_ids.shape[0] // self.states.shape[0]
        states = np.repeat(self.states, rows_per_source, axis=0)
        mask = np.repeat(self.mask, rows_per_source, axis=0)
        logits, self.past = self.function(input_ids, self.past, states, mask)
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        if self.past is not None:
            self.past = [np.take(p, rows, axis=0) for p in self.past]


def as_decoder(decoder: Decoder | StepFunction) -> Decoder:
    return decoder if hasattr(decoder, "start") else CallableDecoder(decoder)
