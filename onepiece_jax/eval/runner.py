"""Evaluation over a whole split, model-agnostic: it takes jitted scoring functions.

Retrieval: the served user vector of each example is ranked against the full item catalogue
(item vectors computed once per evaluation) on device, batch by batch; only the int32 ranks come
back to the host. Ranking: per-task scores read from each task's own step, AUC/GAUC computed
exactly over the split at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from onepiece_jax.data.loader import BatchIterator, device_batch
from onepiece_jax.eval.metrics import RetrievalMetrics
from onepiece_jax.eval.ranking import RankingEvaluator
from onepiece_jax.eval.retrieval import protocol_string, target_ranks


def evaluate_retrieval(user_fn: Callable[[dict], jax.Array], item_vecs: jax.Array,
                       arrays: dict[str, np.ndarray], *, batch_size: int, ks: Sequence[int],
                       exclude_history: bool, chunk: int, dataset: str, split: str,
                       put: Callable[[dict], dict] = lambda b: b) -> dict:
    """Leave-one-out full-catalogue metrics; ``user_fn(batch) -> f32[B, d]`` (the served step)."""
    acc = RetrievalMetrics(ks)
    for batch in BatchIterator(arrays, batch_size, shuffle=False, seed=0):
        dev = put(device_batch(batch))
        ranks = target_ranks(user_fn(dev), item_vecs, dev["target"], dev["exclude"],
                             exclude_history=exclude_history, chunk=chunk)
        acc.update(np.asarray(ranks), batch["example_mask"])
    protocol = protocol_string(dataset, split, exclude_history, ks,
                               num_items=int(item_vecs.shape[0] - 1))
    return {"protocol": protocol, "split": split, "metrics": acc.result()}


def evaluate_ranking(score_fn: Callable[[dict], jax.Array], arrays: dict[str, np.ndarray], *,
                     batch_size: int, group_size: int, task_names: Sequence[str], dataset: str,
                     split: str, seed: int = 0,
                     put: Callable[[dict], dict] = lambda b: b) -> dict:
    """Per-task AUC / GAUC (grouped per request); ``score_fn(batch) -> f32[B, C, T]``.

    Candidates are grouped into random groups of C with a fixed ``seed`` (SPEC §4: random
    grouping at inference too), so the number is reproducible.
    """
    ev = RankingEvaluator(task_names)
    it = BatchIterator(arrays, batch_size, shuffle=False, seed=seed, group_size=group_size,
                       regroup=True)
    for batch in it:
        scores = score_fn(put(device_batch(batch)))
        ev.update(np.asarray(scores), batch["cis_label"], batch["cis_item"] > 0,
                  batch["example_mask"], batch["request"])
    metrics = ev.result()
    protocol = (f"{dataset} | {split} | time split | random candidate groups of C={group_size} "
                f"(seed {seed}) | AUC, GAUC per request (one-class requests skipped)")
    return {"protocol": protocol, "split": split, "metrics": metrics}
