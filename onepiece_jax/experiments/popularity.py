"""The time-aware popularity ranker: a training-free baseline for every retrieval and ranking table.

An item's score for an example at time ``t`` is the number of *training* events on it in the
window ``[h - window, h)``, where ``h`` is ``t`` floored to the hour; ties are broken by the
item's training events over all time before ``h``. Training events are the ones the models learn
from (leave-one-out: every event but each user's last two; time-split ranking: the history
events), so no held-out target is ever counted, and nothing at or after the example's hour is.
Logs without timestamps (S3-Rec Amazon) have no clock: every training event counts.

It answers "how much of an anchor gain is popularity alone": on MovieLens-100K the items watched
most in the week before the target already reach a sizeable HR@10 with the history excluded.
Retrieval ranks use the evaluator's rules (full catalogue, history excluded, ties pessimistic);
ranking scores go through the same AUC/GAUC code as the models'.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onepiece_jax.data.context import ContextBuilder, ContextConfig
from onepiece_jax.data.events import EventLog
from onepiece_jax.data.loader import BuiltDataset
from onepiece_jax.data.tfds_builder import dataset_label
from onepiece_jax.eval.metrics import RetrievalMetrics
from onepiece_jax.eval.ranking import RankingEvaluator
from onepiece_jax.eval.retrieval import protocol_string
from onepiece_jax.eval.runner import eval_subset, ranking_protocol

BUCKET_SECONDS = 3600


def windowed_counts(times: np.ndarray, items: np.ndarray, num_items: int,
                    boundaries: np.ndarray, window: int
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per ascending boundary ``b``: ``(index, in_window, before)``, the per-item counts
    (int64[num_items + 1]) of events with time in ``[b - window, b)`` and in ``(-inf, b)``.

    ``window <= 0`` means unbounded (``in_window == before``). Streams: one pass over the
    events sorted by time, O(num_items) memory whatever the number of boundaries.
    """
    order = np.argsort(times, kind="stable")
    times, items = times[order], items[order]
    before = np.zeros(num_items + 1, np.int64)
    dropped = np.zeros(num_items + 1, np.int64)
    head = tail = 0
    for index, b in enumerate(np.asarray(boundaries)):
        stop = int(np.searchsorted(times, b, side="left"))
        np.add.at(before, items[head:stop], 1)
        head = stop
        if window > 0:
            start = int(np.searchsorted(times, b - window, side="left"))
            np.add.at(dropped, items[tail:start], 1)
            tail = start
        yield index, before - dropped, before


def popularity_scores(in_window: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Window count first, all-time count as the tie-break: one exact int64 key per item."""
    return in_window * (int(before.max(initial=0)) + 1) + before


def _snapshots(times: np.ndarray, items: np.ndarray, num_items: int, example_time: np.ndarray,
               window: int, timed: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rows, scores)`` per snapshot: the examples that share it and every item's score."""
    if not timed:  # no clock: one snapshot of every training event
        counts = np.bincount(items, minlength=num_items + 1).astype(np.int64)
        yield np.arange(example_time.shape[0]), popularity_scores(counts, counts)
        return
    hour = (example_time // BUCKET_SECONDS) * BUCKET_SECONDS
    bounds, inverse = np.unique(hour, return_inverse=True)
    rows_of = np.argsort(inverse, kind="stable")
    splits = np.cumsum(np.bincount(inverse, minlength=bounds.size))[:-1]
    groups = np.split(rows_of, splits)
    for index, in_window, before in windowed_counts(times, items, num_items, bounds, window):
        yield groups[index], popularity_scores(in_window, before)


def popularity_ranks(times: np.ndarray, items: np.ndarray, num_items: int, *,
                     example_time: np.ndarray, target: np.ndarray, exclude: np.ndarray,
                     window: int, timed: bool, exclude_history: bool) -> np.ndarray:
    """0-based rank of each target among items 1..N under the evaluator's rules.

    ``rank = #{v != target, v not excluded : score(v) >= score(target)}`` (ties pessimistic);
    ``exclude: int32[B, E]`` is 0-padded and never removes the target itself.
    """
    ranks = np.zeros(target.shape[0], np.int64)
    for rows, scores in _snapshots(times, items, num_items, example_time, window, timed):
        ranked = np.sort(scores[1:])
        s_target = scores[target[rows]]
        ahead = num_items - np.searchsorted(ranked, s_target, side="left") - 1
        if exclude_history:
            ex = exclude[rows]
            listed = (ex > 0) & (ex != target[rows, None])
            ahead -= (listed & (scores[ex] >= s_target[:, None])).sum(axis=1)
        ranks[rows] = ahead
    return ranks


def popularity_candidate_scores(times: np.ndarray, items: np.ndarray, levels: np.ndarray,
                                num_items: int, *, example_time: np.ndarray,
                                candidates: np.ndarray, task_levels: tuple[int, ...],
                                window: int, timed: bool) -> np.ndarray:
    """float64[B, C, T]: task t scores a candidate by its training events of behaviour level
    >= ``task_levels[t]`` (most-ordered items for the order task, and so on)."""
    out = np.zeros((*candidates.shape, len(task_levels)), np.float64)
    for t, level in enumerate(task_levels):
        keep = levels >= level
        for rows, scores in _snapshots(times[keep], items[keep], num_items, example_time,
                                       window, timed):
            out[rows, :, t] = scores[candidates[rows]]
    return out


def window_text(window: int, timed: bool) -> str:
    if not timed:
        return "all training events (no timestamps)"
    if window <= 0:
        return "training events before the example's hour"
    days = window / 86_400
    span = f"{days:g} day{'s' * (days != 1)}" if days >= 1 else f"{window} s"
    return f"training events in the {span} before the example's hour"


def evaluate_popularity(config, build_dir: str | Path, window: int, *, split: str = "test",
                        log: EventLog | None = None) -> dict:
    """Scores ``split`` of a built dataset with the popularity ranker; returns a results dict
    shaped like the models' (``protocol``, ``split``, ``metrics``). ``log`` defaults to the
    configured dataset (tests pass planted logs)."""
    from onepiece_jax.data.tfds_builder import read_log

    data = BuiltDataset.open(build_dir)
    arrays, subset = eval_subset(data.load_split(split), int(config.eval.get("max_examples", 0)))
    builder = ContextBuilder(read_log(config) if log is None else log,
                             ContextConfig.from_config(config))
    mask = builder.train_mask
    times, items, levels = builder.time[mask], builder.item[mask], builder.behavior[mask]
    timed = bool(data.spec["has_timestamps"])
    num_items = int(data.spec["num_items"])
    how = f"popularity ranker: {window_text(window, timed)}, ties by all earlier ones"
    how += f" | {subset}" if subset else ""
    if config.mode == "retrieval":
        exclude_history = bool(config.eval.exclude_history)
        ranks = popularity_ranks(times, items, num_items, example_time=arrays["time"],
                                 target=arrays["target"], exclude=arrays["exclude"],
                                 window=window, timed=timed, exclude_history=exclude_history)
        acc = RetrievalMetrics(tuple(config.eval.ks))
        acc.update(ranks)
        protocol = protocol_string(dataset_label(data.spec["dataset"], config), split,
                                   exclude_history, tuple(config.eval.ks), num_items=num_items)
        return {"protocol": f"{protocol} | {how}", "split": split, "metrics": acc.result()}
    behaviors = list(data.spec["behaviors"])
    task_levels = tuple(behaviors.index(t) + 1 for t in config.tasks)
    scores = popularity_candidate_scores(times, items, levels, num_items,
                                         example_time=arrays["time"],
                                         candidates=arrays["cis_item"], task_levels=task_levels,
                                         window=window, timed=timed)
    ev = RankingEvaluator(tuple(config.tasks))
    ev.update(scores, arrays["cis_label"], arrays["cis_item"] > 0,
              np.ones(scores.shape[0], bool), arrays["request"])
    protocol = ranking_protocol(data.spec["dataset"], split, "all candidates of a request "
                                "(scores do not depend on grouping)", how)
    return {"protocol": protocol, "split": split, "metrics": ev.result()}
