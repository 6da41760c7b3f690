"""Answer the forward steps (`StepCall`s) of many searches at once, merging those one decoder can run together.

In-flight batching holds a cohort per admission step, each its own search with its own caches. Run one graph
call per cohort and a stream of small cohorts reads every weight once per cohort per step; merged, the weights
are read once per step for all of them. A decoder merges when it offers `step_merged` (the torch runner);
calls whose new lengths differ (a cohort's first step feeds its whole prompt) are merged only with their like.
A merged call that fails is retried one call at a time, so a fault in one cohort's step fails that cohort only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from captioning.decoding import StepCall

LOG = logging.getLogger(__name__)


def _merger(call: StepCall):
    return getattr(getattr(call.session, "decoder", None), "step_merged", None)


def merges(call: StepCall) -> bool:
    """Whether `call`'s decoder runs the steps of several searches in one pass."""
    return _merger(call) is not None


def run_calls(calls: Sequence[StepCall], merge: bool = True) -> tuple[list[object], int]:
    """Each call's result (or the exception it raised), and how many forward passes that took (`merge`
    False: one per call, to measure what merging buys)."""
    results: list[object] = [None] * len(calls)
    groups: dict[tuple, list[int]] = {}
    for i, call in enumerate(calls):
        key = (id(call.session.decoder), call.input_ids.shape[1]) if merge and merges(call) else ("alone", i)
        groups.setdefault(key, []).append(i)
    passes = 0
    for indices in groups.values():
        if len(indices) > 1:
            try:
                merged = _merger(calls[indices[0]])([calls[i] for i in indices])
                passes += 1
                for i, result in zip(indices, merged, strict=True):
                    results[i] = result
                continue
            except Exception:
                LOG.exception("a merged step of %d cohorts failed; retrying them one at a time", len(indices))
        for i in indices:
            passes += 1
            try:
                results[i] = calls[i].run()
            except Exception as exc:
                results[i] = exc
    return results, passes
