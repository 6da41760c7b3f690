"""Greedy and beam-search decoding for any model with `init_state` / `step` (see baseline_models)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State, "torch.Tensor | None"]]


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens, <end> included when it was produced
    score: float  # sum of log-probabilities
    alphas: list[torch.Tensor] = dataclasses.field(default_factory=list)  # one [R] per step, when attending


def _select(state: State, index: torch.Tensor) -> State:
    return tuple(s.index_select(0, index) for s in state)


def beam_search(
    step: StepFn, state: State, start: int, end: int, width: int = 3, max_len: int = 30
) -> Hypothesis:
    """The highest-scoring sequence found by a beam of `width` (one input: the state's first dim is 1).

    Each step keeps the `width` best extensions of the live hypotheses; one that ends with <end> is finished
    and the beam shrinks by one, as in Show-Attend-Tell. Width 1 is exactly greedy decoding.
    """
    if width < 1:
        raise ValueError("beam width must be >= 1")
    live = [Hypothesis([], 0.0)]
    finished: list[Hypothesis] = []
    tokens = torch.tensor([start])
    for _ in range(max_len):
        log_probs, state, alphas = step(tokens, state)
        vocab = log_probs.shape[-1]
        scores = torch.tensor([h.score for h in live], dtype=log_probs.dtype)[:, None] + log_probs
        top = scores.flatten().topk(min(width - len(finished), scores.numel()))
        keep, next_tokens, next_live = [], [], []
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            parent, word = divmod(flat, vocab)
            extra = [alphas[parent]] if alphas is not None else []
            hyp = Hypothesis([*live[parent].tokens, word], value, [*live[parent].alphas, *extra])
            if word == end:
                finished.append(hyp)
            else:
                keep.append(parent)
                next_tokens.append(word)
                next_live.append(hyp)
        live = next_live
        if not live or len(finished) >= width:
            break
        state = _select(state, torch.tensor(keep))
        tokens = torch.tensor(next_tokens)
    candidates = finished + live  # sequences cut at max_len count as they are
    return max(candidates, key=lambda h: h.score)


def greedy(step: StepFn, state: State, start: int, end: int, max_len: int = 30) -> list[list[int]]:
    """Argmax decoding of a whole batch at once; each sequence stops at its <end> (kept in the output)."""
    batch = state[0].shape[0]
    tokens = torch.full((batch,), start, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_len):
        log_probs, state, _ = step(tokens, state)
        tokens = log_probs.argmax(-1)
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(tokens[i]))
        done |= tokens == end
        if bool(done.all()):
            break
    return out
