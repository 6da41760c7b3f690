"""Medians with their spread, and latency percentiles: what every bench table reports."""

from __future__ import annotations

import math
import statistics


def summary(values: list[float]) -> dict:
    """Median with the spread across repeats (min/max and quartiles)."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": quartiles[0],
        "q3": quartiles[2],
        "n": len(ordered),
    }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile, as perf_analyzer computes its latency percentiles."""
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * pct / 100))
    return ordered[rank - 1]
