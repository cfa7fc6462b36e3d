"""Medians with their spread, the statistic every benchmark here reports."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def summary(times: list[float]) -> dict:
    """Median, min, max and count of a list of seconds."""
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "n": len(times),
    }


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, sync=lambda x: x) -> dict:
    """``summary`` of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``sync`` blocks on the call's result (``jax.block_until_ready`` for JAX).
    """
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return summary(times)


def ratio(num: dict, den: dict) -> dict:
    """Ratio of two summaries: of medians, with the range from the extremes."""
    return {
        "median": num["median"] / den["median"],
        "min": num["min"] / den["max"],
        "max": num["max"] / den["min"],
    }
