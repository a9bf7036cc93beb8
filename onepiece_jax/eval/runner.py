"""Evaluation over a whole split, model-agnostic: it takes jitted scoring functions.

Retrieval: the served user vector of each example is ranked against the full item catalogue
(item vectors computed once per evaluation, possibly sharded over devices and hosts, see
``eval.retrieval``) on device, batch by batch; only the int32 ranks come back to the host.
Ranking: per-task scores read from each task's own step, AUC/GAUC computed exactly over the split
at the end.

Several processes: each feeds its ``rows`` of every batch (``put`` assembles the global batch);
ranks, scores, labels and masks come back whole on every process (``parallel.distributed.to_host``,
an all-gather across processes), so every process aggregates the same numbers over all examples —
the AUC is the exact one of the whole split, not an average of per-process AUCs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from onepiece_jax.data.loader import BatchIterator, device_batch, num_rows, take_rows
from onepiece_jax.eval.metrics import RetrievalMetrics
from onepiece_jax.eval.ranking import RankingEvaluator
from onepiece_jax.eval.retrieval import protocol_string, target_ranks
from onepiece_jax.parallel.distributed import to_host


def eval_subset(arrays: dict, max_examples: int, seed: int = 0) -> tuple[dict, str]:
    """A fixed random subset of ``max_examples`` rows (``config.eval.max_examples``), in split
    order, and the note every protocol string of it carries; the whole split and "" when
    ``max_examples`` is 0 or covers it. The subset depends only on the split and ``seed``, so
    every checkpoint and model of a comparison is scored on the same examples."""
    n = num_rows(arrays)
    if max_examples <= 0 or max_examples >= n:
        return arrays, ""
    idx = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    return take_rows(arrays, idx), f"{max_examples} of {n} examples (fixed random subset)"


def evaluate_retrieval(user_fn: Callable[[dict], jax.Array], item_vecs: jax.Array,
                       arrays: dict, *, batch_size: int, ks: Sequence[int],
                       exclude_history: bool, chunk: int, dataset: str, split: str,
                       put: Callable[[dict], dict] = lambda b: b, rows: slice | None = None,
                       num_items: int | None = None, shards: int = 1,
                       item_sharding: NamedSharding | None = None) -> dict:
    """Leave-one-out full-catalogue metrics; ``user_fn(batch) -> f32[B, d]`` (the served step).

    ``item_vecs: f32[M, d]``, row i = item i; ``num_items`` (default M - 1), ``shards`` and
    ``item_sharding`` describe a padded, sharded item matrix (``eval.retrieval.target_ranks``).
    """
    num_items = int(item_vecs.shape[0] - 1) if num_items is None else num_items
    acc = RetrievalMetrics(ks)
    for batch in BatchIterator(arrays, batch_size, shuffle=False, seed=0, rows=rows):
        dev = put(device_batch(batch))
        ranks = target_ranks(user_fn(dev), item_vecs, dev["target"], dev["exclude"],
                             exclude_history=exclude_history, chunk=chunk, num_items=num_items,
                             shards=shards, item_sharding=item_sharding)
        acc.update(to_host(ranks), to_host(dev["example_mask"]))
    protocol = protocol_string(dataset, split, exclude_history, ks, num_items=num_items)
    return {"protocol": protocol, "split": split, "metrics": acc.result()}


def evaluate_ranking(score_fn: Callable[[dict], jax.Array], arrays: dict, *,
                     batch_size: int, group_size: int, task_names: Sequence[str], dataset: str,
                     split: str, seed: int = 0,
                     put: Callable[[dict], dict] = lambda b: b,
                     rows: slice | None = None) -> dict:
    """Per-task AUC / GAUC (grouped per request); ``score_fn(batch) -> f32[B, C, T]``.

    Candidates are grouped into random groups of C with a fixed ``seed`` (SPEC §4: random
    grouping at inference too), so the number is reproducible.
    """
    ev = RankingEvaluator(task_names)
    it = BatchIterator(arrays, batch_size, shuffle=False, seed=seed, group_size=group_size,
                       regroup=True, rows=rows)
    for batch in it:
        dev = put(device_batch(batch))
        scores = score_fn(dev)
        ev.update(to_host(scores), to_host(dev["cis_label"]), to_host(dev["cis_item"]) > 0,
                  to_host(dev["example_mask"]), to_host(dev["request"]))
    metrics = ev.result()
    return {"protocol": ranking_protocol_string(dataset, split, group_size, seed), "split": split,
            "metrics": metrics}


def ranking_protocol_string(dataset: str, split: str, group_size: int, seed: int = 0) -> str:
    """How a model's ranking number was obtained (SPEC §5: always printed with the number)."""
    return ranking_protocol(dataset, split,
                            f"random candidate groups of C={group_size} (seed {seed})")


def ranking_protocol(dataset: str, split: str, candidates: str, scorer: str = "") -> str:
    """The ranking protocol line: ``candidates`` says how a request's candidates were scored
    together, ``scorer`` names a training-free scorer (popularity, a reference row)."""
    text = (f"{dataset} | {split} | time split | {candidates} | AUC, GAUC per request "
            "(one-class requests skipped)")
    return f"{text} | {scorer}" if scorer else text
