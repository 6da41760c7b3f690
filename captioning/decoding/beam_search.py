"""Beam search, a numpy port of `GenerationMixin._beam_search` in `transformers` 4.57.6.

The port keeps HF's vectorised state layout ([batch, beams, ...] arrays, -1e9 score masks, the early-stop
heuristic) instead of the older per-hypothesis `BeamScorer`, because the 4.57 heuristics (which hypotheses
are admitted, when a batch item stops) are defined by that arithmetic; rewriting it differently would
change outputs in corner cases. Every beam is decoded every step, like HF does, except while all beams of
each source still hold the same tokens: then one row per source is decoded and shared (same numbers, fewer
rows; mBART's prompt and forced language code make that the first two of its steps).
"""

from __future__ import annotations

import numpy as np

from captioning.decoding.decoder import Calls, Decoder, Progress, StepCall, drain
from captioning.decoding.settings import GenerationSettings
from captioning.decoding.tokens import (
    beam_candidates,
    beam_log_probs,
    device_scoring,
    top_candidates,
    topk_indices,
)

__all__ = ["beam_calls", "beam_search"]

_NEG = np.float32(-1.0e9)


def _gather_beams(tensor: np.ndarray, beam_indices: np.ndarray) -> np.ndarray:
    """HF `_gather_beams`: pick along axis 1 of [B, beams, ...] with [B, k] indices."""
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (tensor.ndim - 2))
    idx = np.broadcast_to(idx, beam_indices.shape + tensor.shape[2:])
    return np.take_along_axis(tensor, idx, axis=1)


def _beams_identical(running_sequences: np.ndarray, cur_len: int) -> bool:
    seq = running_sequences[:, :, :cur_len]
    return bool((seq == seq[:, :1]).all())


def _length_divisor(length: int, length_penalty: float) -> np.float32:
    # torch divides a float32 tensor by a Python float in float32
    return np.float32(length**length_penalty)


class _Beams:
    """The search state of B sources x num_beams hypotheses, in HF's array layout and arithmetic."""

    def __init__(self, batch: int, s: GenerationSettings) -> None:
        self.s, self.batch, self.nb = s, batch, s.num_beams
        self.prompt_len = len(s.prompt_ids)
        self.cur_len = self.prompt_len
        self.eos = np.asarray(s.eos_token_ids, dtype=np.int64)
        self.keep = max(2, 1 + len(s.eos_token_ids)) * self.nb
        self.top_num_beam_mask = np.arange(self.keep) < self.nb
        self.early_true = s.early_stopping is True
        self.batch_offset = np.arange(batch, dtype=np.int64)[:, None] * self.nb
        nb, max_length = self.nb, s.max_length
        # The fill value never reaches the output: each hypothesis is cut to its own length at the end.
        # (HF pads a batch with `pad_token_id or eos_token_id[0]`, i.e. EOS when pad is 0.)
        self.running_sequences = np.full((batch, nb, max_length), s.pad_token_id, dtype=np.int64)
        self.running_sequences[:, :, : self.prompt_len] = np.asarray(s.prompt_ids, dtype=np.int64)
        self.sequences = self.running_sequences.copy()
        self.running_beam_scores = np.zeros((batch, nb), dtype=np.float32)
        self.running_beam_scores[:, 1:] = _NEG
        self.beam_scores = np.full((batch, nb), _NEG, dtype=np.float32)
        self.is_sent_finished = np.zeros((batch, nb), dtype=bool)
        self.heuristic_unsatisfied = np.ones((batch, 1), dtype=bool)
        self.running_beam_indices = np.full((batch, nb, max_length - self.prompt_len), -1, dtype=np.int32)
        self.beam_indices = self.running_beam_indices.copy()

    def identical(self) -> bool:
        return _beams_identical(self.running_sequences, self.cur_len)

    def inputs(self, shared: bool) -> np.ndarray:
        """The running hypotheses as [rows, cur_len] token ids (one row per source when `shared`)."""
        rows = self.running_sequences[:, :1] if shared else self.running_sequences
        return rows[:, :, : self.cur_len].reshape(-1, self.cur_len)

    def top(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Steps b-c of HF's loop on full [B x beams, V] processed log-probs: the top-K over all beams."""
        batch, nb, vocab = self.batch, self.nb, log_probs.shape[-1]
        log_probs = (log_probs.reshape(batch, nb, vocab) + self.running_beam_scores[:, :, None]).reshape(
            batch, -1
        )
        topk_idx = topk_indices(log_probs, self.keep)
        return np.take_along_axis(log_probs, topk_idx, axis=1), topk_idx, vocab

    def top_of_logits(self, input_ids: np.ndarray, logits: np.ndarray, shared: bool):
        """The same from a host step's raw logits: `beam_candidates` where the step's processors allow it
        (most steps), else the full processed rows."""
        top = beam_candidates(self.s, self.cur_len, logits, self.running_beam_scores, self.keep, shared)
        if top is not None:
            return top[0], top[1], logits.shape[-1]
        log_probs = beam_log_probs(self.s, input_ids, logits)
        return self.top(np.repeat(log_probs, self.nb, axis=0) if shared else log_probs)

    def top_of(self, values: np.ndarray, ids: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The same from each row's own top candidates (a device session's `step_candidates`)."""
        scores, flat = top_candidates(values, ids, self.running_beam_scores, vocab, self.keep)
        return scores, flat, vocab

    def advance(self, top: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
        """Steps c-f of HF's loop from the top-K (scores, flat indices, vocabulary); returns which stopped."""
        nb, cur_len, prompt_len = self.nb, self.cur_len, self.prompt_len
        topk_log_probs, topk_idx, vocab = top
        topk_beam, topk_ids = topk_idx // vocab, topk_idx % vocab
        topk_running_sequences = _gather_beams(self.running_sequences, topk_beam)
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices = _gather_beams(self.running_beam_indices, topk_beam)
        topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beam + self.batch_offset
        # d. which continuations stop (EOS or max_length)
        hits = np.isin(topk_ids, self.eos) | (cur_len + 1 >= self.s.max_length)
        # e. best non-finished beams continue
        topk_running_log_probs = topk_log_probs + hits.astype(np.float32) * _NEG
        nxt = topk_indices(topk_running_log_probs, nb)
        self.running_sequences = _gather_beams(topk_running_sequences, nxt)
        self.running_beam_scores = np.take_along_axis(topk_running_log_probs, nxt, axis=1)
        self.running_beam_indices = _gather_beams(topk_running_beam_indices, nxt)
        # f. admit finished candidates among the top num_beams into the finished set
        just_finished = hits & self.top_num_beam_mask[None, :]
        scores = topk_log_probs / _length_divisor(cur_len + 1 - prompt_len, self.s.length_penalty)
        full = self.is_sent_finished.all(axis=-1, keepdims=True) & self.early_true
        scores = scores + full.astype(np.float32) * _NEG
        scores = scores + (~self.heuristic_unsatisfied).astype(np.float32) * _NEG
        scores = scores + (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([self.beam_scores, scores], axis=1)
        best = topk_indices(merged_scores, nb)
        self.sequences = _gather_beams(np.concatenate([self.sequences, topk_running_sequences], axis=1), best)
        self.beam_scores = np.take_along_axis(merged_scores, best, axis=1)
        merged_indices = np.concatenate([self.beam_indices, topk_running_beam_indices], axis=1)
        self.beam_indices = _gather_beams(merged_indices, best)
        merged_finished = np.concatenate([self.is_sent_finished, just_finished], axis=1)
        self.is_sent_finished = np.take_along_axis(merged_finished, best, axis=1)
        return hits

    def parents(self) -> np.ndarray:
        """g. the cache row each surviving beam continues (flat, source-major)."""
        return self.running_beam_indices[:, :, self.cur_len - self.prompt_len].reshape(-1)

    def keep_going(self, hits: np.ndarray) -> bool:
        """Move to the next position and apply HF's stopping rules."""
        self.cur_len += 1
        s, lp = self.s, self.s.length_penalty
        never = s.early_stopping == "never" and lp > 0.0
        best_length = (s.max_length if never else self.cur_len) - self.prompt_len
        best_running = self.running_beam_scores[:, :1] / _length_divisor(best_length, lp)
        worst_finished = np.where(self.is_sent_finished, self.beam_scores.min(axis=1, keepdims=True), _NEG)
        improvable = (best_running > worst_finished).any(axis=-1, keepdims=True)
        self.heuristic_unsatisfied = self.heuristic_unsatisfied & improvable
        exists_open_beam = not (self.is_sent_finished.all() and self.early_true)
        return bool(self.heuristic_unsatisfied.any()) and exists_open_beam and not hits.all()

    def best(self) -> list[list[int]]:
        """Best hypothesis per item; its generated length is the count of recorded beam indices."""
        return [self.best_of(b) for b in range(self.batch)]

    def best_of(self, b: int) -> list[int]:
        generated = int((self.beam_indices[b, 0, :] != -1).sum())
        return self.sequences[b, 0, : self.prompt_len + generated].tolist()

    def final(self) -> np.ndarray:
        """[B] items whose finished set can no longer change: no new hypothesis is admitted for them (the
        heuristic, or every beam finished under early_stopping=True), so `best_of` is their answer."""
        full = self.is_sent_finished.all(axis=-1) & self.early_true
        return ~self.heuristic_unsatisfied[:, 0] | full


def beam_search(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    s: GenerationSettings,
) -> list[list[int]]:
    return drain(beam_calls(decoder, encoder_hidden_states, encoder_attention_mask, s))


def beam_calls(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    s: GenerationSettings,
) -> Calls:
    """Beam search one step per `send()`: yields each forward step (`StepCall`, answered with its result) and
    which items are final (HF's heuristic says no open beam can beat the finished ones, so their best
    hypothesis never changes again); returns every item's best."""
    beams = _Beams(encoder_hidden_states.shape[0], s)
    session = decoder.start(encoder_hidden_states, encoder_attention_mask, s.num_beams)
    on_device = hasattr(session, "step_candidates")
    first = True
    while True:
        # a. forward the running beams (whole prompt first, then only the newest token). While every source's
        # beams hold the same tokens (the prompt; a forced BOS), one row per source stands for all of them:
        # the cache shrinks to B rows here and grows back to B x beams in the reorder below.
        shared = beams.identical()
        if shared:
            session.reorder(beams.batch_offset[:, 0])
        flat = beams.inputs(shared)
        step_ids = flat if first else flat[:, -1:]
        first = False
        scoring = device_scoring(s, beams.cur_len) if on_device else None
        if scoring is not None:  # the device scores and picks: only [rows, K] candidates cross
            values, ids, vocab = yield StepCall(session, "step_candidates", (step_ids, beams.keep, scoring))
            if shared:
                values, ids = np.repeat(values, s.num_beams, axis=0), np.repeat(ids, s.num_beams, axis=0)
            hits = beams.advance(beams.top_of(values, ids, vocab))
        else:
            logits = yield StepCall(session, "step", (step_ids,))
            hits = beams.advance(beams.top_of_logits(flat, logits, shared))
        # g. reorder the cache for the surviving beams (after a shared step the cache has one row per
        # source: row b // num_beams stands for every beam of b), then decide whether to go on
        parents = beams.parents()
        session.reorder(parents // s.num_beams if shared else parents)
        if not beams.keep_going(hits):
            break
        yield Progress(beams.final(), beams.best_of)
    return beams.best()
