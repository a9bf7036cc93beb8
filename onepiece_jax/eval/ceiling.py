"""The ranking ceiling of the synthetic logs: AUC and GAUC of the generator's own odds.

A ranking model's test AUC on the synthetic logs only means something next to what the world
allows. Scoring each request's candidates by the generator's true probability of reaching a
task's funnel level (click, cart, order) gives the highest AUC any model can reach in
expectation. The same score with latent terms removed (the user's taste, the query's leaf, the
item's own quality, all qualities) says how much of that ceiling needs them. A model sees the
terms only through the history, the query and the side features; an item's own quality it can
learn only from the item's id, so "no item quality" is what features and context can reveal.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from onepiece_jax.data.readers.synthetic import FunnelOdds, SynthConfig, simulate_requests
from onepiece_jax.eval.metrics import auc, gauc

TASKS = ("click", "cart", "order")  # label >= 1, 2, 3
# score name -> odds terms it keeps
SCORES = {"oracle": ("liked", "on_query", "side_quality", "item_quality"),
          "no user taste": ("on_query", "side_quality", "item_quality"),
          "no query leaf": ("liked", "side_quality", "item_quality"),
          "no item quality": ("liked", "on_query", "side_quality"),
          "no quality": ("liked", "on_query"),
          "quality only": ("side_quality", "item_quality")}


def task_log_prob(odds: FunnelOdds, cfg: SynthConfig, task: str) -> np.ndarray:
    """log P(the candidate reaches ``task``'s funnel level) under ``odds``."""
    def log_sigmoid(x):
        return -np.logaddexp(0.0, -x)

    out = log_sigmoid(odds.click_logit(cfg))
    for step in TASKS[1:TASKS.index(task) + 1]:
        out = out + log_sigmoid(odds.step_logit(cfg, step))
    return out


def ranking_ceiling(num_users: int, num_items: int, seed: int = 0,
                    config: SynthConfig | None = None,
                    test_fraction: float = 0.1) -> dict[str, dict[str, dict[str, float]]]:
    """``{requests: {score: {"click/AUC": ..., "click/GAUC": ..., ...}}}`` for the logs
    ``generate_synthetic`` writes with these arguments, over all requests and over the latest
    ``test_fraction`` of them by time (the ranking test split)."""
    cfg = config or SynthConfig()
    parts = list(simulate_requests(num_users, num_items, seed, cfg))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    full = FunnelOdds(**{f.name: cols[f.name] for f in dataclasses.fields(FunnelOdds)})
    first = np.r_[True, cols["request"][1:] != cols["request"][:-1]]
    req_time = cols["time"][first]
    n_test = int(round(req_time.size * test_fraction))
    latest = np.zeros(req_time.size, bool)
    latest[np.argsort(req_time, kind="stable")[req_time.size - n_test:]] = True
    subsets = {"all requests": np.ones(cols["label"].size, bool),
               f"latest {test_fraction:.0%} (test split)": latest[np.cumsum(first) - 1]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for subset, mask in subsets.items():
        out[subset] = {}
        for name, keep in SCORES.items():
            odds = dataclasses.replace(full, **{f.name: np.zeros_like(getattr(full, f.name))
                                                for f in dataclasses.fields(full)
                                                if f.name not in keep})
            row = {}
            for level, task in enumerate(TASKS, start=1):
                score = task_log_prob(odds, cfg, task)[mask]
                label = cols["label"][mask] >= level
                row[f"{task}/AUC"] = auc(score, label)
                row[f"{task}/GAUC"] = gauc(score, label, cols["request"][mask])
            out[subset][name] = row
    return out
