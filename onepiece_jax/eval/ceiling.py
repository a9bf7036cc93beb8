"""Reference points for ranking AUC: the synthetic logs' ceiling and a feature floor.

A ranking model's test AUC on the synthetic logs only means something next to what the world
allows. Scoring each request's candidates by the generator's true probability of reaching a
task's funnel level (click, cart, order) gives the highest AUC any model can reach in
expectation. The same score with latent terms removed (the user's taste, the query's leaf, the
item's own quality, all qualities) says how much of that ceiling needs them. A model sees the
terms only through the history, the query and the side features; an item's own quality it can
learn only from the item's id, so "no item quality" is what features and context can reveal.

The floor is :func:`feature_ranker`, the logistic regression a CTR engineer would write first: a
neural ranker that does not beat it has not yet learnt what five features already say.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onepiece_jax.data.context import time_split
from onepiece_jax.data.events import EventLog
from onepiece_jax.data.readers import read_dataset
from onepiece_jax.data.readers.synthetic import (
    FunnelOdds,
    SynthConfig,
    generate_synthetic,
    simulate_requests,
    world_arguments,
)
from onepiece_jax.eval.metrics import auc, gauc

TASKS = ("click", "cart", "order")  # label >= 1, 2, 3
VAL_FRACTION = 0.1  # ContextConfig's: the floor trains on the requests before validation
# score name -> odds terms it keeps
SCORES = {"oracle": ("liked", "on_query", "side_quality", "item_quality"),
          "no user taste": ("on_query", "side_quality", "item_quality"),
          "no query leaf": ("liked", "side_quality", "item_quality"),
          "no item quality": ("liked", "on_query", "side_quality"),
          "no quality": ("liked", "on_query"),
          "quality only": ("side_quality", "item_quality")}
FLOOR_ROW = "feature logistic regression (test split)"


def task_log_prob(odds: FunnelOdds, cfg: SynthConfig, task: str) -> np.ndarray:
    """log P(the candidate reaches ``task``'s funnel level) under ``odds``."""
    def log_sigmoid(x):
        return -np.logaddexp(0.0, -x)

    out = log_sigmoid(odds.click_logit(cfg))
    for step in TASKS[1:TASKS.index(task) + 1]:
        out = out + log_sigmoid(odds.step_logit(cfg, step))
    return out


def ranking_ceiling(num_users: int, num_items: int, seed: int = 0,
                    config: SynthConfig | None = None, test_fraction: float = 0.1,
                    val_fraction: float = VAL_FRACTION) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`world_ceiling` of the logs ``generate_synthetic`` writes with these arguments
    (into a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        world = generate_synthetic(tmp, num_users, num_items, seed, config)
        return world_ceiling(world, val_fraction=val_fraction, test_fraction=test_fraction)


def world_ceiling(world: str | Path, *, val_fraction: float = VAL_FRACTION,
                  test_fraction: float = 0.1) -> dict[str, dict[str, dict[str, float]]]:
    """``{requests: {score: {"click/AUC": ..., "click/GAUC": ..., ...}}}`` for a generated
    world (its requests replayed from its ``synth.json``), over all requests and over the
    ranking test split (:func:`latest_subset`); ``"floor"`` holds the :func:`feature_ranker` on
    that split (:data:`FLOOR_ROW`). Requests are split by time as a ranking config with these
    fractions splits them."""
    args = world_arguments(world)
    cfg = args["config"]
    log = read_dataset("jdsearch", world)
    parts = list(simulate_requests(**args))
    label = np.concatenate([p["label"] for p in parts])
    if not np.array_equal(label, log.requests.cand_label):  # the replay must be the file
        raise RuntimeError(f"{world}: simulate_requests does not replay the requests of this "
                           "world (written by another version of the generator?)")
    full = FunnelOdds(**{f.name: np.concatenate([p[f.name] for p in parts])
                         for f in dataclasses.fields(FunnelOdds)})
    req, split = _request_rows(log.requests, val_fraction, test_fraction)
    subsets = {"all requests": np.ones(label.size, bool),
               latest_subset(test_fraction): split == 2}
    out: dict[str, dict[str, dict[str, float]]] = {subset: {} for subset in subsets}
    for name, keep in SCORES.items():
        odds = dataclasses.replace(full, **{f.name: np.zeros_like(getattr(full, f.name))
                                            for f in dataclasses.fields(full)
                                            if f.name not in keep})
        scores = {task: task_log_prob(odds, cfg, task) for task in TASKS}
        for subset, mask in subsets.items():
            row = {}
            for level, task in enumerate(TASKS, start=1):
                positive = label[mask] >= level
                row[f"{task}/AUC"] = auc(scores[task][mask], positive)
                row[f"{task}/GAUC"] = gauc(scores[task][mask], positive, req[mask])
            out[subset][name] = row
    out["floor"] = {FLOOR_ROW: feature_ranker(log, val_fraction=val_fraction,
                                              test_fraction=test_fraction)}
    return out


def latest_subset(test_fraction: float) -> str:
    """The key of the test split's rows in :func:`world_ceiling`'s result."""
    return f"latest {test_fraction:.0%} (test split)"


def reference_row(ceiling: Mapping[str, Mapping[str, Mapping[str, float]]], name: str,
                  test_fraction: float) -> dict[str, float]:
    """A test-split row of :func:`world_ceiling`'s result by reference name: ``feature_floor``
    or one of :data:`SCORES` (``oracle``, ...): what an experiment suite reports beside its
    models."""
    if name == "feature_floor":
        return dict(ceiling["floor"][FLOOR_ROW])
    if name not in SCORES:
        raise ValueError(f"unknown ranking reference {name!r}; expected 'feature_floor' or one "
                         f"of {sorted(SCORES)}")
    return dict(ceiling[latest_subset(test_fraction)][name])


def _request_rows(requests, val_fraction: float,
                  test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate row: its request index and its request's split (0 train, 1 val, 2 test)."""
    req = np.repeat(np.arange(len(requests)), np.diff(requests.offsets))
    return req, time_split(requests.time, val_fraction, test_fraction)[req]


def feature_ranker(log: EventLog, *, leaf: str = "cate_4", rated: tuple[str, ...] = ("brand",
                   "shop"), val_fraction: float = VAL_FRACTION, test_fraction: float = 0.1,
                   l2: float = 1e-6, prior_weight: float = 20.0) -> dict[str, float]:
    """Test AUC and GAUC per funnel task of a logistic regression on hand-made features.

    Per candidate: the share of the user's events before the request that fall in the
    candidate's ``leaf`` category (taste), and whether so (0/1); the share of the request's
    candidates in that category (what seeing the other candidates reveals); and for each
    ``rated`` feature the log-odds of the task's smoothed positive rate of its value over the
    training requests. Requests are split by time as the ranking configs split them; one
    regression per task (label >= level), fit on the training requests by Newton's method.
    """
    for name in (leaf, *rated):
        if name not in log.item_features:
            raise ValueError(f"feature_ranker: item feature {name!r} not in the log's "
                             f"{sorted(log.item_features)}")
    rq = log.requests
    if len(rq) == 0:
        raise ValueError(f"feature_ranker: {log.dataset} has no ranking requests")
    lens = np.diff(rq.offsets)
    req, split = _request_rows(rq, val_fraction, test_fraction)
    cand_leaf = log.item_features[leaf].values[rq.cand_item, 0].astype(np.int64)
    ev_leaf = log.item_features[leaf].values[log.item, 0].astype(np.int64)
    before = _events_before(log.user, ev_leaf, log.time, rq.user[req], cand_leaf, rq.time[req])
    total = _events_before(log.user, np.zeros_like(ev_leaf), log.time, rq.user[req],
                           np.zeros_like(cand_leaf), rq.time[req])
    taste = before / np.maximum(total, 1)
    key = req * (cand_leaf.max() + 1) + cand_leaf
    _, where, counts = np.unique(key, return_inverse=True, return_counts=True)
    train, test = split == 0, split == 2
    out = {}
    for level, task in enumerate(log.behaviors, start=1):
        label = (rq.cand_label >= level).astype(np.float64)
        if label[test].min() == label[test].max():
            continue
        cols = [np.ones(label.size), taste, (taste > 0).astype(np.float64),
                counts[where] / lens[req]]
        prior = label[train].mean()
        for name in rated:
            value = log.item_features[name].values[rq.cand_item, 0]
            n = np.bincount(value[train], minlength=value.max() + 1)
            pos = np.bincount(value[train], weights=label[train], minlength=value.max() + 1)
            rate = (pos + prior_weight * prior) / (n + prior_weight)
            cols.append(np.log(rate / (1 - rate))[value])  # log-odds: the regression's scale
        x = np.stack(cols, axis=1)
        w = _logistic_fit(x[train], label[train], l2)
        out[f"{task}/AUC"] = auc(x[test] @ w, label[test])
        out[f"{task}/GAUC"] = gauc(x[test] @ w, label[test], req[test])
    return out


def _events_before(ev_user: np.ndarray, ev_key: np.ndarray, ev_time: np.ndarray,
                   user: np.ndarray, key: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Per query row: how many events of ``user`` with ``key`` happened before ``time``."""
    times = np.unique(ev_time)
    width = times.size + 1
    keys = max(ev_key.max(), key.max()) + 1
    group = ev_user.astype(np.int64) * keys + ev_key
    sorted_keys = np.sort(group * width + np.searchsorted(times, ev_time))
    q_group = user.astype(np.int64) * keys + key
    q_rank = np.searchsorted(times, time, side="left")
    return (np.searchsorted(sorted_keys, q_group * width + q_rank, side="left")
            - np.searchsorted(sorted_keys, q_group * width, side="left"))


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 100) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (few columns, many rows)."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / y.size + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / y.size + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w
