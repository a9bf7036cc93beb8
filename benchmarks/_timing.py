"""Round-robin wall-clock timing shared by the micro-benchmarks.

Variants are timed in turn within each repeat, so that load from other processes on a shared
machine falls on all of them alike, and the median is reported (robust to the odd stall).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def round_robin_ms(calls: Mapping[str, Callable[[int], Any]], repeats: int,
                   warmup: int = 1) -> dict[str, float]:
    """Median wall time in ms of each ``call(i)`` over ``repeats`` rounds, after ``warmup`` untimed
    calls each (the first compiles). ``i`` is the repeat index, for calls that vary a key."""
    for call in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(call(0))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(i))
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}
