"""Exact host-side (NumPy) evaluation metrics: top-K retrieval metrics, AUC and GAUC.

Retrieval metrics take **0-based ranks** of the target(s) in the ranked catalogue (rank 0 = first),
as produced by ``eval.retrieval.target_ranks``. With several targets per example, each target's
rank is its position in the full ranked list (the other targets count like any other item), so
the ranks are the positions of the relevant items and DCG is a plain sum over them.

Per example, with R the set of valid target ranks (|R| ≥ 1):
  * HR@K = 1[min R < K]                                 (any target in the top K)
  * Recall@K = |{r ∈ R : r < K}| / |R|                  (= HR@K for one target)
  * NDCG@K = Σ_{r ∈ R, r < K} 1/log2(r + 2) / Σ_{i < min(|R|, K)} 1/log2(i + 2)
  * MRR = 1 / (min R + 1)                               (untruncated)
and every metric is the mean over examples with at least one valid target.

AUC is the Mann-Whitney statistic with ties at half credit (average ranks), i.e. the probability
that a random positive outscores a random negative, ties counting 1/2. GAUC is the average of
per-group AUCs weighted by **group size (number of scored items in the group)**, skipping groups
that have only one class (their AUC is undefined); when no group has both classes GAUC is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_ranks(ranks: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Normalises ranks to int64[B, T] and valid to bool[B, T] (a 1-D input means T = 1)."""
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
        valid = None if valid is None else np.asarray(valid)[:, None]
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be int[B] or int[B, T], got shape {ranks.shape}")
    valid = np.ones(ranks.shape, bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != ranks.shape:
        raise ValueError(f"valid shape {valid.shape} does not match ranks shape {ranks.shape}")
    if np.any(ranks[valid] < 0):
        raise ValueError("ranks must be 0-based (>= 0) at valid positions")
    return ranks.astype(np.int64), valid


def _discount(ranks: np.ndarray) -> np.ndarray:
    return 1.0 / np.log2(ranks + 2.0)


def per_example_retrieval_metrics(
    ranks: np.ndarray, valid: np.ndarray | None = None, ks: Sequence[int] = (10,)
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-example HR/Recall/NDCG@K and MRR.

    Args:
      ranks: int[B] or int[B, T], 0-based ranks of the target(s).
      valid: bool of the same shape (default all True): which targets are real.
      ks: cut-offs.

    Returns:
      (metrics name → float64[B], counted: bool[B]) — examples without a valid target have
      ``counted`` False and metric value 0.
    """
    ranks, valid = _as_ranks(ranks, valid)
    num_targets = valid.sum(axis=-1)
    counted = num_targets > 0
    safe_targets = np.maximum(num_targets, 1)
    big = np.iinfo(np.int64).max
    best = np.where(valid, ranks, big).min(axis=-1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        in_top = valid & (ranks < k)
        ideal = _discount(np.arange(k))
        ideal_dcg = np.cumsum(ideal)[np.minimum(safe_targets, k) - 1]
        dcg = np.where(in_top, _discount(ranks), 0.0).sum(axis=-1)
        out[f"HR@{k}"] = (counted & (best < k)).astype(np.float64)
        out[f"Recall@{k}"] = in_top.sum(axis=-1) / safe_targets
        out[f"NDCG@{k}"] = dcg / ideal_dcg
    out["MRR"] = np.where(counted, 1.0 / (np.minimum(best, big - 1) + 1.0), 0.0)
    return out, counted


class RetrievalMetrics:
    """Streaming accumulator of retrieval metrics: exact means over all examples seen.

    >>> m = RetrievalMetrics(ks=(10, 50)); m.update(ranks, valid); m.result()["NDCG@10"]
    """

    def __init__(self, ks: Sequence[int] = (10, 50, 200)):
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0

    def update(self, ranks: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Adds a batch: ``ranks: int[B]`` or ``int[B, T]``, ``valid`` bool of the same shape
        (padded examples: all False)."""
        values, counted = per_example_retrieval_metrics(ranks, valid, self.ks)
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value[counted].sum())
        self._count += int(counted.sum())

    def result(self) -> dict[str, float]:
        """Metric name ("HR@10", "NDCG@10", "Recall@10", "MRR") → mean, plus "count" (examples).

        All metrics are NaN before any valid example was seen."""
        names = [f"{m}@{k}" for k in self.ks for m in ("HR", "NDCG", "Recall")] + ["MRR"]
        out = {
            name: (self._sums.get(name, 0.0) / self._count if self._count else float("nan"))
            for name in names
        }
        out["count"] = float(self._count)
        return out


def grouped_auc(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact Mann-Whitney AUC of every group, in one sort.

    Args:
      scores: float[N]; labels: [N], positive where > 0.5; groups: int[N] group ids.

    Returns:
      (auc, size, both_classes) per distinct group (ascending id): auc is NaN where the group has
      a single class.
    """
    scores = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(labels).ravel() > 0.5
    groups = np.asarray(groups).ravel()
    if not (scores.shape == positive.shape == groups.shape):
        raise ValueError("scores, labels and groups must have the same number of elements")
    if not np.all(np.isfinite(scores)):
        raise ValueError("AUC needs finite scores (found NaN or inf)")
    if scores.size == 0:
        empty = np.zeros(0)
        return empty, empty.astype(np.int64), empty.astype(bool)
    order = np.lexsort((scores, groups))
    group_sorted, score_sorted = groups[order], scores[order]
    new_group = np.r_[True, group_sorted[1:] != group_sorted[:-1]]
    group_index = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    position = np.arange(scores.size) - group_start[group_index]  # 0-based rank inside the group

    new_tie = new_group | np.r_[True, score_sorted[1:] != score_sorted[:-1]]
    tie_index = np.cumsum(new_tie) - 1
    tie_first = position[np.flatnonzero(new_tie)]
    tie_size = np.bincount(tie_index)
    average_rank = tie_first[tie_index] + (tie_size[tie_index] - 1) / 2.0 + 1.0  # 1-based

    pos_sorted = positive[order].astype(np.float64)
    size = np.bincount(group_index)
    num_pos = np.bincount(group_index, weights=pos_sorted)
    num_neg = size - num_pos
    rank_sum = np.bincount(group_index, weights=average_rank * pos_sorted)
    both = (num_pos > 0) & (num_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)
    return np.where(both, auc, np.nan), size, both


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC with ties at half credit; NaN when only one class is present."""
    scores = np.asarray(scores)
    value, _, _ = grouped_auc(scores, labels, np.zeros(scores.size, np.int64))
    return float(value[0]) if value.size else float("nan")


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: size-weighted mean of per-group AUCs over groups with both classes; NaN if none.
    """
    return _size_weighted(*grouped_auc(scores, labels, groups))


def _size_weighted(value: np.ndarray, size: np.ndarray, both: np.ndarray) -> float:
    if not np.any(both):
        return float("nan")
    return float(np.sum(value[both] * size[both]) / np.sum(size[both]))


class RankingMetrics:
    """Accumulates one task's (score, label, group) triples and computes AUC/GAUC exactly at the
    end (not averaged per batch, which would bias both)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []

    def update(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> None:
        """Adds items: ``scores``, ``labels``, ``groups`` and ``mask`` of one common shape (any);
        only entries where ``mask`` is True (default all) are kept."""
        scores, labels, groups = (np.asarray(a) for a in (scores, labels, groups))
        if not (scores.shape == labels.shape == groups.shape):
            raise ValueError(f"scores {scores.shape}, labels {labels.shape} and groups "
                             f"{groups.shape} must have the same shape")
        keep = np.ones(scores.shape, bool) if mask is None else np.asarray(mask, bool)
        self._scores.append(scores[keep].astype(np.float64))
        self._labels.append((labels[keep] > 0.5).astype(np.int8))
        self._groups.append(groups[keep].astype(np.int64))

    def result(self) -> dict[str, float]:
        """{"AUC", "GAUC", "count" (items), "groups" (used by GAUC), "groups_skipped"
        (one-class)}; AUC/GAUC are NaN when undefined."""
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int8)
        groups = np.concatenate(self._groups) if self._groups else np.zeros(0, np.int64)
        value, size, both = grouped_auc(scores, labels, groups)
        return {
            "AUC": auc(scores, labels),
            "GAUC": _size_weighted(value, size, both),
            "count": float(scores.size),
            "groups": float(both.sum()),
            "groups_skipped": float((~both).sum()),
        }
