"""Preference anchors (PA): aggregated top-k items per behaviour level, leak-free by construction.

An anchor group for behaviour level ``g`` lists the items with the most events at level ≥ ``g``
under one key (the request's query, or one global key where there is no query). For logs with
timestamps the counts come from a trailing window ``[b - window, b)`` where ``b`` is the example's
time rounded *down* to ``bucket`` seconds — every counted event is strictly earlier than the
example, and all examples in a bucket share one cached snapshot. For logs without timestamps
(S3-Rec Amazon) the counts come from the training events only and are static.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    group_levels: tuple[int, ...]  # 1-based behaviour level per group (strongest first, say)
    group_size: int
    window: int  # seconds (or events of order, for order-only logs); <= 0 means unbounded
    bucket: int  # snapshot granularity in seconds


class AnchorIndex:
    """Answers ``anchors(key, time) -> int32[G, P]`` (right-padded with 0) from an event log.

    Events are sorted once by (key, time); a query slices the key's block with two binary
    searches and counts items with ``np.unique``, so memory stays O(events) and each distinct
    (key, bucket) pair is computed once.
    """

    def __init__(self, keys: np.ndarray, times: np.ndarray, items: np.ndarray,
                 levels: np.ndarray, config: AnchorConfig, *, static: bool = False):
        order = np.lexsort((times, keys))
        self._keys = keys[order]
        self._times = times[order]
        self._items = items[order]
        self._levels = levels[order]
        self._config = config
        self._static = static
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def snapshot_time(self, time: int) -> int:
        """The exclusive upper bound of the counting window for an example at ``time``."""
        if self._static:
            return 0
        bucket = max(int(self._config.bucket), 1)
        return (int(time) // bucket) * bucket

    def anchors(self, key: int, time: int) -> np.ndarray:
        end = self.snapshot_time(time)
        cache_key = (int(key), end)
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = self._compute(int(key), end)
            self._cache[cache_key] = hit
        return hit

    def _compute(self, key: int, end: int) -> np.ndarray:
        cfg = self._config
        # a key of the keys' own dtype: a Python int against int32 keys makes numpy cast the
        # whole key column per search (O(events) instead of O(log events))
        key = self._keys.dtype.type(key)
        lo = np.searchsorted(self._keys, key, side="left")
        hi = np.searchsorted(self._keys, key, side="right")
        times = self._times[lo:hi]
        if self._static:
            a, b = 0, hi - lo
        else:
            start = end - cfg.window if cfg.window > 0 else np.iinfo(np.int64).min
            a = np.searchsorted(times, start, side="left")
            b = np.searchsorted(times, end, side="left")  # strictly before `end`
        items = self._items[lo + a:lo + b]
        levels = self._levels[lo + a:lo + b]
        out = np.zeros((len(cfg.group_levels), cfg.group_size), np.int32)
        for g, level in enumerate(cfg.group_levels):
            top = top_items(items[levels >= level], cfg.group_size)
            out[g, :top.size] = top
        return out


def top_items(items: np.ndarray, k: int) -> np.ndarray:
    """The k most frequent items, ties broken by the smaller id (deterministic)."""
    if items.size == 0:
        return np.zeros(0, np.int32)
    uniq, counts = np.unique(items, return_counts=True)
    order = np.lexsort((uniq, -counts))[:k]
    return uniq[order].astype(np.int32)
