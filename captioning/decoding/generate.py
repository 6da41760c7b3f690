"""`generate()` over any `Decoder`: token-for-token what `transformers` 4.57.6 returns for each batch item.

The serving models run their decoder graphs through ONNX Runtime, so decoding cannot use `model.generate()`.
This package re-implements the parts of it the deployment uses (greedy search, beam search, and the logits
processors the checkpoints' generation configs switch on) in numpy; it imports neither torch nor Triton.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from captioning.decoding.beam_search import beam_calls
from captioning.decoding.decoder import (
    Calls,
    Decoder,
    StepFunction,
    Steps,
    as_decoder,
    drain,
    map_steps,
    served,
)
from captioning.decoding.greedy import greedy_calls
from captioning.decoding.settings import GenerationSettings
from captioning.decoding.vocab import VocabMap

__all__ = ["GenerationCancelled", "generate", "generate_calls", "generate_steps"]


class GenerationCancelled(Exception):
    """Every request of a batch was cancelled (its client went away or gave up): decoding stopped."""


class _Stoppable:
    """A Decoder whose sessions ask `should_stop` before each step: both searches stop the same way."""

    def __init__(self, decoder: Decoder, should_stop: Callable[[], bool]) -> None:
        self.decoder, self.should_stop = decoder, should_stop

    def start(self, states, mask, beams):
        session = self.decoder.start(states, mask, beams)
        return _StoppableSession(session, self.should_stop)


class _StoppableSession:
    """Wraps a session's step methods. The wrappers must not refer back to this object: a cycle would keep the
    session (a batch's cross keys/values, 40 MB per image at full size) alive until the cyclic garbage
    collector ran, which array-heavy code rarely triggers; served at concurrency 16 that was 2 GB a minute."""

    def __init__(self, session, should_stop: Callable[[], bool]) -> None:
        self.session = session
        if hasattr(session, "step_candidates"):  # keep the device path when the session has one
            self.step_candidates = _checked(session.step_candidates, should_stop)
            self.step_argmax = _checked(session.step_argmax, should_stop)
        self.step = _checked(session.step, should_stop)
        self.reorder = session.reorder


def _checked(method: Callable, should_stop: Callable[[], bool]) -> Callable:
    def call(*args):
        if should_stop():
            raise GenerationCancelled("every request of this batch was cancelled")
        return method(*args)

    return call


def generate(
    decoder: Decoder | StepFunction,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    settings: GenerationSettings,
    vocab: VocabMap | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[int]]:
    return drain(
        generate_calls(decoder, encoder_hidden_states, encoder_attention_mask, settings, vocab, should_stop)
    )


def generate_steps(
    decoder: Decoder | StepFunction,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    settings: GenerationSettings,
    vocab: VocabMap | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Steps:
    """Decode every batch item; returns, per item, the ids HF `generate()` returns for it alone (prompt
    included, nothing after EOS / the end of the best hypothesis).

    With `vocab` the decoder scores the positions of a trimmed vocabulary: settings (in tokenizer ids) move
    into that space here and outputs move back, so callers only ever see tokenizer ids. `should_stop` is
    asked before every step; when it answers True decoding stops with `GenerationCancelled`.
    """
    return served(
        generate_calls(decoder, encoder_hidden_states, encoder_attention_mask, settings, vocab, should_stop)
    )


def generate_calls(
    decoder: Decoder | StepFunction,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    settings: GenerationSettings,
    vocab: VocabMap | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Calls:
    """`generate_steps` that also yields each forward step (`StepCall`) for its driver to answer: in-flight
    batching runs the steps of many searches as one forward pass."""
    settings.validate()
    if encoder_hidden_states.shape[0] != encoder_attention_mask.shape[0]:
        raise ValueError("encoder_hidden_states and encoder_attention_mask disagree on the batch size")
    if encoder_hidden_states.shape[0] == 0:
        return []
    search = greedy_calls if settings.num_beams == 1 else beam_calls
    inner = vocab.remap(settings) if vocab is not None else settings
    decoder = as_decoder(decoder)
    if should_stop is not None:
        decoder = _Stoppable(decoder, should_stop)
    calls = search(decoder, encoder_hidden_states, encoder_attention_mask, inner)
    if vocab is not None:  # every output moved back to tokenizer ids
        calls = map_steps(calls, vocab.to_full)
    return (yield from calls)
