"""Greedy search, `GenerationMixin._sample` with `do_sample=False` in `transformers` 4.57.6."""

from __future__ import annotations

import numpy as np

from captioning.decoding.decoder import Calls, Decoder, Progress, StepCall, drain
from captioning.decoding.settings import GenerationSettings
from captioning.decoding.tokens import device_scoring, greedy_tokens

__all__ = ["greedy_calls", "greedy_search"]


def greedy_search(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    s: GenerationSettings,
) -> list[list[int]]:
    return drain(greedy_calls(decoder, encoder_hidden_states, encoder_attention_mask, s))


def greedy_calls(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    s: GenerationSettings,
) -> Calls:
    """Greedy search one step per `send()`: yields each forward step (`StepCall`, answered with its result)
    and which items are final after each step (an item is final once it wrote EOS or reached max_length);
    returns every item's ids."""
    batch = encoder_hidden_states.shape[0]
    ids = np.tile(np.asarray(s.prompt_ids, dtype=np.int64), (batch, 1))
    eos = np.asarray(s.eos_token_ids, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    lengths = np.full(batch, s.max_length, dtype=np.int64)
    session = decoder.start(encoder_hidden_states, encoder_attention_mask, 1)
    step_ids = ids
    on_device = hasattr(session, "step_argmax")
    while True:
        scoring = device_scoring(s, ids.shape[1]) if on_device else None
        if scoring is not None:  # only the chosen tokens cross from the device
            best = yield StepCall(session, "step_argmax", (step_ids, scoring))
            next_tokens = np.where(unfinished, best, s.pad_token_id).astype(np.int64)
        else:
            logits = yield StepCall(session, "step", (step_ids,))
            next_tokens = greedy_tokens(s, ids, logits, unfinished)
        ids = np.concatenate([ids, next_tokens[:, None]], axis=1)
        hit = np.isin(next_tokens, eos) | (ids.shape[1] >= s.max_length)
        lengths[unfinished & hit] = ids.shape[1]
        unfinished &= ~hit
        if not unfinished.any():
            break
        final = ids  # the ids so far: a final item's tokens never change again
        yield Progress(~unfinished, lambda b, final=final: final[b, : lengths[b]].tolist())
        step_ids = next_tokens[:, None]
    return [ids[b, : lengths[b]].tolist() for b in range(batch)]
