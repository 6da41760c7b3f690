"""The one place where the next token is chosen: logits processors, log-softmax, greedy and top-k picks.

Both searches (`greedy.py`, `beam_search.py`) call only these functions to turn a step's logits into tokens,
so forced tokens, penalties and tie-breaking are defined once. A decoder on a device may apply the simple
processors itself (`DeviceScoring`) and send back only its best candidates; `top_candidates` merges them. On
the host, beam search takes the same candidates from raw logits (`beam_candidates`) wherever those processors
are all a step needs, so no [rows, V] processed array is written (mBART: 250k per row).

Exactness notes: scores stay float32 and are combined in `transformers`' order; the only known sources of
divergence are (a) `log_softmax`, whose last bit can differ from torch's kernel, and (b) exact ties in top-k,
which torch resolves in an unspecified order and we resolve by lower index. Both matter only for near-ties
between candidates; `beam_candidates` adds none (it selects what the full rows select, bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from captioning.decoding.settings import GenerationSettings

__all__ = [
    "DeviceScoring",
    "beam_candidates",
    "beam_log_probs",
    "device_scoring",
    "greedy_tokens",
    "log_softmax",
    "process_scores",
    "top_candidates",
    "topk_indices",
]

_TOPK_CHUNK = 256


def _banned_ngram_tokens(row: np.ndarray, n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `row` (fairseq / HF NoRepeatNGram)."""
    cur_len = row.shape[0]
    if cur_len + 1 < n:
        return []
    tokens = row.tolist()
    prefix = tokens[cur_len + 1 - n :]
    return [tokens[i + n - 1] for i in range(cur_len - n + 1) if tokens[i : i + n - 1] == prefix]


def process_scores(settings: GenerationSettings, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Apply the logits processors HF builds for these settings, in HF's order, to float32 `scores`."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    cur_len = input_ids.shape[-1]
    if settings.repetition_penalty != 1.0:
        penalty = np.float32(settings.repetition_penalty)
        picked = np.take_along_axis(scores, input_ids, axis=1)
        picked = np.where(picked < 0, picked * penalty, picked / penalty).astype(np.float32)
        np.put_along_axis(scores, input_ids, picked, axis=1)
    if settings.no_repeat_ngram_size > 0:
        for i in range(scores.shape[0]):
            banned = _banned_ngram_tokens(input_ids[i], settings.no_repeat_ngram_size)
            if banned:
                scores[i, banned] = -np.inf
    if settings.min_length > 0 and settings.eos_token_ids and cur_len < settings.min_length:
        scores[:, list(settings.eos_token_ids)] = -np.inf
    if settings.forced_bos_token_id is not None and cur_len == 1:
        scores[:] = -np.inf
        scores[:, settings.forced_bos_token_id] = 0.0
    if settings.forced_eos_token_id is not None and cur_len == settings.max_length - 1:
        scores[:] = -np.inf
        scores[:, settings.forced_eos_token_id] = 0.0
    return scores


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis; the sum is taken in float64, which matches torch's CPU
    kernel more often than a float32 sum does."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    # Summing with dtype=float64 avoids a float64 copy of a [rows, 250k] array (2.6x faster, same bits).
    total = np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    shifted -= np.log(total)
    return shifted


def topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, sorted descending; exact ties go to the lower index
    (torch.topk leaves tie order unspecified).

    Rows are up to beams x 250k wide (mBART), so candidates are first cut with a cheap bound: the k-th
    largest of the maxima of disjoint chunks is the largest of k distinct elements' minima, hence at most the
    k-th largest value of the row.
    """
    rows, width = x.shape
    out = np.empty((rows, k), dtype=np.int64)
    chunks = width // _TOPK_CHUNK
    bounds = None
    if chunks > k:
        maxima = x[:, : chunks * _TOPK_CHUNK].reshape(rows, chunks, _TOPK_CHUNK).max(axis=2)
        bounds = -np.partition(-maxima, k - 1, axis=1)[:, k - 1]
    for r in range(rows):
        row = x[r]
        cand = None if bounds is None else np.flatnonzero(row >= bounds[r])
        if cand is None or not k <= len(cand) <= 64 * k:
            # no useful bound (tiny rows, -inf-masked chunks, NaN): take the exact k-th value
            cand = np.arange(width)
            if k < width:
                kth = -np.partition(-row, k - 1)[k - 1]
                cand = np.flatnonzero(row >= kth)
        order = np.lexsort((cand, -row[cand]))
        out[r] = cand[order[:k]]
    return out


def greedy_tokens(
    settings: GenerationSettings, input_ids: np.ndarray, logits: np.ndarray, unfinished: np.ndarray
) -> np.ndarray:
    """argmax of the processed scores per row; finished rows get the pad token (as HF fills them)."""
    scores = process_scores(settings, input_ids, logits)
    return np.where(unfinished, scores.argmax(axis=-1), settings.pad_token_id).astype(np.int64)


def beam_log_probs(settings: GenerationSettings, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Processed log-probabilities of each row's continuations, which beam search adds to its beam scores."""
    return process_scores(settings, input_ids, log_softmax(logits))


_ROUNDING = 8 * 2.0**-24  # a float32 operation's relative rounding error, with a factor of 4 to spare


def beam_candidates(
    settings: GenerationSettings,
    cur_len: int,
    logits: np.ndarray,
    running: np.ndarray,
    keep: int,
    shared: bool,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Beam search's top-`keep` continuations of each source from raw logits, without writing processed
    [rows, V] arrays: ([B, keep] scores, flat indices beam x V + token), exactly what `topk_indices` over
    `beam_log_probs(...) + running` selects, ties to the lower flat index. None where this shortcut does not
    apply (processors that need whole rows, a forced token, non-finite logits): take the full path then.

    `logits` are [B x beams, V], or [B, V] when every source's beams are `shared`; `running` the [B, beams]
    beam scores. The log-softmax's normaliser is computed exactly as `log_softmax` computes it; the search
    is then cut with a bound from the maxima of disjoint token groups (as in `topk_indices`), shifted per beam
    by its score and widened by a rounding margin, so that no token the float32 arithmetic could tie with the
    last one kept is lost. Only the survivors (tens per beam) get their exact float32 scores.
    """
    scoring = device_scoring(settings, cur_len)
    if scoring is None or scoring.forced is not None:
        return None
    logits = logits.astype(np.float32, copy=False)
    batch, beams = running.shape
    rows, vocab = logits.shape
    groups, need = vocab // _TOPK_CHUNK, keep + len(scoring.banned) * beams
    if groups <= need:
        return None  # a small vocabulary: the full path is cheap
    # Group g holds tokens g, g + groups, g + 2 x groups, ...: its maxima are one vectorised pass.
    maxima = logits[:, : groups * _TOPK_CHUNK].reshape(rows, _TOPK_CHUNK, groups).max(axis=1)
    top = maxima.max(axis=1, keepdims=True)  # the row maxima, without another pass over the rows
    if groups * _TOPK_CHUNK < vocab:
        top = np.maximum(top, logits[:, groups * _TOPK_CHUNK :].max(axis=1, keepdims=True))
    shifted = logits - top
    np.exp(shifted, out=shifted)  # the same values `log_softmax` sums, so the same normaliser
    log_total = np.log(shifted.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32))
    del shifted
    if not (np.isfinite(top).all() and np.isfinite(log_total).all()):
        return None
    source = np.repeat(np.arange(rows), beams) if shared else np.arange(rows)  # logits row of each beam
    # A beam's score of a token is about its logit + offset; a group's best is its maximum's.
    with np.errstate(invalid="ignore"):  # a beam at -inf gets a NaN threshold: no candidates, as it should
        offset = running.reshape(-1).astype(np.float64) - top[source, 0] - log_total[source, 0]
        approx = (maxima[source] + offset[:, None]).reshape(batch, beams * groups)
        bound = -np.partition(-approx, need - 1, axis=1)[:, need - 1]  # <= each source's need-th best
        bound = np.repeat(bound, beams)
        threshold = bound - offset  # the same bound in each beam's logits
        scale = np.abs(threshold - top[source, 0]) + np.abs(bound - running.reshape(-1)) + np.abs(bound) + 1
        threshold -= _ROUNDING * scale
    rows_above = _Above(logits, maxima, groups)
    return _exact_top(rows_above, source, threshold, top, log_total, running, keep, scoring.banned)


class _Above:
    """The tokens of a logits row at or above a threshold, looked for only in groups whose maximum is."""

    def __init__(self, logits: np.ndarray, maxima: np.ndarray, groups: int) -> None:
        self.logits, self.maxima, self.groups = logits, maxima, groups
        self.body = logits[:, : groups * _TOPK_CHUNK].reshape(len(logits), _TOPK_CHUNK, groups)
        self.members = np.arange(_TOPK_CHUNK, dtype=np.int64)[:, None] * groups

    def __call__(self, row: int, threshold: float) -> np.ndarray:
        hit = np.flatnonzero(self.maxima[row] >= threshold)
        inside = self.body[row][:, hit] >= threshold
        tokens = (self.members + hit[None, :])[inside]
        tail = np.flatnonzero(self.logits[row, self.groups * _TOPK_CHUNK :] >= threshold)
        return np.concatenate([tokens, tail + self.groups * _TOPK_CHUNK]) if len(tail) else tokens


def _exact_top(above: _Above, source, threshold, top, log_total, running, keep, banned):
    """The exact float32 scores of each beam's tokens above its threshold, and each source's best `keep`."""
    batch, beams = running.shape
    vocab = above.logits.shape[1]
    flat_running = running.reshape(-1)
    scores, flats = np.empty((batch, keep), np.float32), np.empty((batch, keep), np.int64)
    for b in range(batch):
        values, indices = [], []
        for j in range(beams):
            beam = b * beams + j
            row = source[beam]
            tokens = above(row, threshold[beam])
            log_probs = (above.logits[row, tokens] - top[row]) - log_total[row]  # `log_softmax`'s steps
            if banned:
                log_probs[np.isin(tokens, banned)] = -np.inf
            values.append(log_probs + flat_running[beam])
            indices.append(tokens + j * vocab)
        value, index = np.concatenate(values), np.concatenate(indices)
        if len(value) < keep:
            return None
        order = np.lexsort((index, -value))[:keep]
        scores[b], flats[b] = value[order], index[order]
    return scores, flats


@dataclass(frozen=True)
class DeviceScoring:
    """The processors of one step that a device can apply itself before its own log-softmax and top-k, so
    that only [rows, k] candidates (beam search) or [rows] tokens (greedy) cross to the host: the end tokens
    banned below `min_length`, and a forced token (mBART's language code, the forced end)."""

    banned: tuple[int, ...] = ()
    forced: int | None = None


def device_scoring(settings: GenerationSettings, cur_len: int) -> DeviceScoring | None:
    """The step's processors as `DeviceScoring`, or None where one needs the full rows on the host
    (repetition penalty, no-repeat n-grams)."""
    if settings.repetition_penalty != 1.0 or settings.no_repeat_ngram_size > 0:
        return None
    banned = settings.eos_token_ids if settings.min_length > 0 and cur_len < settings.min_length else ()
    forced = None
    if settings.forced_bos_token_id is not None and cur_len == 1:
        forced = settings.forced_bos_token_id
    if settings.forced_eos_token_id is not None and cur_len == settings.max_length - 1:
        forced = settings.forced_eos_token_id
    return DeviceScoring(tuple(banned), forced)


def top_candidates(
    values: np.ndarray, ids: np.ndarray, running: np.ndarray, vocab: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search's top-`keep` continuations over all beams from each row's own top candidates.

    `values`/`ids` are [B x beams, k >= keep] processed log-probs and token ids; `running` the [B, beams] beam
    scores. The best `keep` of a source's beams x vocabulary are among the union of its rows' best `keep`, so
    this selects exactly what a top-k over the full rows selects; ties go to the lower flat index, as there.
    Returns [B, keep] scores and flat indices (beam x vocab + token)."""
    batch, beams = running.shape
    k = values.shape[1]
    scores = (values.reshape(batch, beams, k) + running[:, :, None]).reshape(batch, beams * k)
    flat = (np.arange(beams, dtype=np.int64)[:, None] * vocab + ids.reshape(batch, beams, k)).reshape(
        batch, -1
    )
    order = np.stack([np.lexsort((flat[b], -scores[b]))[:keep] for b in range(batch)])
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(flat, order, axis=1)
