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

from captioning.decoding.decoder import Decoder
from captioning.decoding.settings import GenerationSettings
from captioning.decoding.tokens import beam_log_probs, topk_indices

__all__ = ["beam_search"]

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


def beam_search(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    s: GenerationSettings,
) -> list[list[int]]:
    batch = encoder_hidden_states.shape[0]
    nb = s.num_beams
    prompt_len = len(s.prompt_ids)
    max_length = s.max_length
    eos = np.asarray(s.eos_token_ids, dtype=np.int64)
    keep = max(2, 1 + len(s.eos_token_ids)) * nb
    top_num_beam_mask = np.arange(keep) < nb
    lp = s.length_penalty
    early_true = s.early_stopping is True

    # The fill value never reaches the output: each hypothesis is cut to its own length at the end.
    # (HF pads a batch with `pad_token_id or eos_token_id[0]`, i.e. EOS when pad is 0.)
    running_sequences = np.full((batch, nb, max_length), s.pad_token_id, dtype=np.int64)
    running_sequences[:, :, :prompt_len] = np.asarray(s.prompt_ids, dtype=np.int64)
    sequences = running_sequences.copy()
    running_beam_scores = np.zeros((batch, nb), dtype=np.float32)
    running_beam_scores[:, 1:] = _NEG
    beam_scores = np.full((batch, nb), _NEG, dtype=np.float32)
    is_sent_finished = np.zeros((batch, nb), dtype=bool)
    heuristic_unsatisfied = np.ones((batch, 1), dtype=bool)
    running_beam_indices = np.full((batch, nb, max_length - prompt_len), -1, dtype=np.int32)
    beam_indices = running_beam_indices.copy()

    session = decoder.start(encoder_hidden_states, encoder_attention_mask, nb)
    first = True
    batch_offset = np.arange(batch, dtype=np.int64)[:, None] * nb
    cur_len = prompt_len
    while True:
        # a. forward the running beams (whole prompt first, then only the newest token). While every source's
        # beams hold the same tokens (the prompt; a forced BOS), one row per source stands for all of them:
        # the cache shrinks to B rows here and grows back to B x beams in step g's reorder.
        shared = _beams_identical(running_sequences, cur_len)
        if shared:
            session.reorder(batch_offset[:, 0])
        rows = running_sequences[:, :1] if shared else running_sequences
        flat = rows[:, :, :cur_len].reshape(-1, cur_len)
        logits = session.step(flat if first else flat[:, -1:])
        first = False
        vocab = logits.shape[-1]

        # b. log-probs, processors, accumulated scores
        log_probs = beam_log_probs(s, flat, logits)
        if shared:
            log_probs = np.repeat(log_probs, nb, axis=0)
        log_probs = log_probs.reshape(batch, nb, vocab) + running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(batch, nb * vocab)

        # c. top-K continuations over all beams
        topk_idx = topk_indices(log_probs, keep)
        topk_log_probs = np.take_along_axis(log_probs, topk_idx, axis=1)
        topk_beam = topk_idx // vocab
        topk_ids = topk_idx % vocab
        topk_running_sequences = _gather_beams(running_sequences, topk_beam)
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices = _gather_beams(running_beam_indices, topk_beam)
        topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beam + batch_offset

        # d. which continuations stop (EOS or max_length)
        hits = np.isin(topk_ids, eos) | (cur_len + 1 >= max_length)

        # e. best non-finished beams continue
        topk_running_log_probs = topk_log_probs + hits.astype(np.float32) * _NEG
        nxt = topk_indices(topk_running_log_probs, nb)
        running_sequences = _gather_beams(topk_running_sequences, nxt)
        running_beam_scores = np.take_along_axis(topk_running_log_probs, nxt, axis=1)
        running_beam_indices = _gather_beams(topk_running_beam_indices, nxt)

        # f. admit finished candidates among the top num_beams into the finished set
        just_finished = hits & top_num_beam_mask[None, :]
        scores = topk_log_probs / _length_divisor(cur_len + 1 - prompt_len, lp)
        full = is_sent_finished.all(axis=-1, keepdims=True) & early_true
        scores = scores + full.astype(np.float32) * _NEG
        scores = scores + (~heuristic_unsatisfied).astype(np.float32) * _NEG
        scores = scores + (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([beam_scores, scores], axis=1)
        best = topk_indices(merged_scores, nb)
        sequences = _gather_beams(np.concatenate([sequences, topk_running_sequences], axis=1), best)
        beam_scores = np.take_along_axis(merged_scores, best, axis=1)
        beam_indices = _gather_beams(np.concatenate([beam_indices, topk_running_beam_indices], axis=1), best)
        is_sent_finished = np.take_along_axis(
            np.concatenate([is_sent_finished, just_finished], axis=1), best, axis=1
        )

        # g. reorder the cache for the surviving beams, then decide whether to go on
        beam_idx = running_beam_indices[:, :, cur_len - prompt_len].reshape(-1)
        # (after a shared step the cache has one row per source: row b // nb stands for every beam of b)
        session.reorder(beam_idx // nb if shared else beam_idx)
        cur_len += 1

        if s.early_stopping == "never" and lp > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_beam_scores[:, :1] / _length_divisor(best_length, lp)
        worst_finished = np.where(is_sent_finished, beam_scores.min(axis=1, keepdims=True), _NEG)
        heuristic_unsatisfied = heuristic_unsatisfied & (best_running > worst_finished).any(
            axis=-1, keepdims=True
        )
        improvement_possible = heuristic_unsatisfied.any()
        exists_open_beam = not (is_sent_finished.all() and early_true)
        valid_continuations = not hits.all()
        if not (improvement_possible and exists_open_beam and valid_continuations):
            break

    # Best hypothesis per item; its generated length is the count of recorded beam indices.
    generated = (beam_indices[:, 0, :] != -1).sum(axis=1)
    return [sequences[b, 0, : prompt_len + int(generated[b])].tolist() for b in range(batch)]
