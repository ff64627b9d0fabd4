"""Percentiles of latency samples, for the benchmarks and the console's statistics."""

import math


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0-100) of `values`, or None if empty
    (the nearest-rank method: the smallest value with at least q% of the
    values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summarize(values: list[float]) -> dict:
    """{"p50", "p95", "count"} of millisecond samples."""
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "count": len(values)}
