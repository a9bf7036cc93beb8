"""The training objective: model outputs + batch + sampled negatives → one scalar loss.

This is where the curriculum (which reasoning step learns which task) meets the per-step losses:
retrieval sums ``BCE + U2I + I2U`` over the supervised (step, task) pairs, ranking sums
``BCE + set-softmax`` (each term weighed by ``config.loss.weights``, 1 by default), and the SASRec
baseline uses plain next-item full-softmax cross-entropy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from onepiece_jax.train import losses, negatives


@dataclasses.dataclass(frozen=True)
class Objective:
    """Static description of the loss (hashable, so it can be closed over under ``jit``)."""

    mode: str
    kind: str  # onepiece | next_item_softmax
    assignment: tuple[tuple[int, int], ...]  # (step, task) pairs
    eta: float
    rank_eta: float
    negative_counts: tuple[tuple[str, int], ...]
    in_batch: bool
    catalogue: bool = False  # every item is a negative (exact U2I softmax; small catalogues)
    weights: tuple[tuple[str, float], ...] = ()  # per loss term; a term not named weighs 1
    bce_on_shared: bool = True  # BCE also over in-batch / catalogue negatives (loss.bce_negatives)
    exclude_history: bool = False  # the example's IH items are not negatives (negatives.py)

    @classmethod
    def from_config(cls, config) -> Objective:
        loss = config.loss
        k = config.model.reasoning_steps
        strategy = "single" if loss.kind == "next_item_softmax" else loss.strategy
        neg = loss.negatives
        return cls(
            mode=config.mode, kind=loss.kind,
            assignment=losses.task_assignment(strategy, k, len(config.tasks)),
            eta=float(loss.eta), rank_eta=float(loss.rank_eta),
            negative_counts=tuple((s, int(neg.get(s, 0))) for s in negatives.SOURCES),
            in_batch=bool(neg.in_batch), catalogue=bool(neg.catalogue),
            weights=tuple((name, float(w)) for name, w in loss.weights.items()),
            bce_on_shared=loss.bce_negatives == "all",
            exclude_history=bool(neg.exclude_history))

    def weighted(self, parts: dict[str, jax.Array]) -> jax.Array:
        """Σ weight · term over one step's named terms; a weight-0 term is left out of the sum
        altogether, so it costs nothing under ``jit`` and cannot bring a NaN into the gradient."""
        weights = dict(self.weights)
        scaled = ((weights.get(name, 1.0), value) for name, value in parts.items())
        return sum((w * value for w, value in scaled if w), jnp.zeros((), jnp.float32))

    @property
    def served_step(self) -> int:
        """The step whose output is served / evaluated: the last supervised one."""
        return max(step for step, _ in self.assignment)


def excluded_items(objective: Objective, batch: dict) -> jax.Array:
    """int32[B, E]: the ids no negative may take for each example: its pool's positives, plus
    its history with ``exclude_history`` (0 = padding, never a negative anyway)."""
    pool = batch["pool_item"]
    if not objective.exclude_history:
        return pool
    return jnp.concatenate([pool, batch["ih_item"].astype(pool.dtype)], axis=1)


def retrieval_pool(objective: Objective, batch: dict, tables: negatives.NegativeTables,
                   key: jax.Array, item_vectors
                   ) -> tuple[jax.Array, jax.Array | None, jax.Array, jax.Array]:
    """Item vectors of the example's pool plus sampled and in-batch negatives.

    ``item_vectors(ids) -> f32[..., d]`` is the item tower. In-batch negatives (the batch's
    targets) and catalogue negatives (every item, ``loss.negatives.catalogue``) are the same ids
    for every row, so their vectors are computed once and returned apart, never broadcast.
    Returns ``item_vec: f32[B, P, d]`` (pool and sampled negatives), ``shared_vec: f32[S, d]`` or
    None (the common negatives, pool columns P..P+S), ``labels: f32[B, P + S, T]`` (negatives are
    0 for every task) and ``valid: bool[B, P + S]`` (padding and negatives that collide with a
    positive, or with ``exclude_history`` a history item, dropped).
    """
    pool, pool_label = batch["pool_item"], batch["pool_label"]
    excluded = excluded_items(objective, batch)
    parts, valids = [pool], [pool > 0]
    counts = dict(objective.negative_counts)
    if any(counts.values()):
        sampled = negatives.sample_negatives(key, pool, counts, tables)
        parts.append(sampled)
        valids.append(negatives.negative_mask(sampled, excluded))
    item_vec = item_vectors(jnp.concatenate(parts, axis=1))
    shared = []  # negatives common to every example: their vectors are computed once
    if objective.in_batch:
        targets = (batch["target"] * batch["example_mask"])[:, None]
        ids, mask = negatives.in_batch_negatives(targets)
        valids.append(mask & negatives.negative_mask(ids, excluded))
        shared.append(targets[:, 0])
    if objective.catalogue:
        valids.append(negatives.catalogue_mask(excluded, tables.num_items))
        shared.append(jnp.arange(1, tables.num_items + 1, dtype=jnp.int32))
    shared_vec = item_vectors(jnp.concatenate(shared)) if shared else None
    valid = jnp.concatenate(valids, axis=1)
    extra = valid.shape[1] - pool.shape[1]
    labels = jnp.concatenate(
        [pool_label, jnp.zeros((pool.shape[0], extra, pool_label.shape[-1]), pool_label.dtype)],
        axis=1)
    return item_vec, shared_vec, labels, valid


def compute_loss(objective: Objective, model, params: Any, batch: dict, catalog: dict,
                 tables: negatives.NegativeTables, key: jax.Array,
                 train: bool = True,
                 gather: Callable[[Any, int], Any] | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and named components; pure, so ``jax.grad`` and ``jit`` see all of it.

    ``gather(tree, axis)`` (the legacy ``pmap`` step, ``train.step.make_pmap_train_step``) collects
    a per-device tree along the batch ``axis`` from every device: the model runs on the local
    rows, the losses on the whole batch, because U2I/I2U and in-batch negatives span examples.
    """
    dropout_key, negative_key = jax.random.split(key)
    variables = {"params": params}
    rngs = {"dropout": dropout_key} if train else {}
    out = model.apply(variables, batch, catalog, train=train, rngs=rngs)
    if gather is not None:
        out, batch = gather(out, 1), gather(batch, 0)  # outputs are [K+1, B, ...]
    mask = batch["example_mask"]
    metrics: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    if objective.kind == "next_item_softmax":
        n = tables.num_items + 1  # not the catalog's rows: those may be padded for sharding
        table = model.apply(variables, jnp.arange(n, dtype=jnp.int32), catalog,
                            method="item_vectors")
        total = losses.next_item_softmax_loss(
            out["user_vectors"][objective.served_step], table, batch["target"], mask,
            exclude=batch["ih_item"] if objective.exclude_history else None)
        metrics["ce"] = total
    elif objective.mode == "retrieval":
        item_vec, shared_vec, labels, valid = retrieval_pool(
            objective, batch, tables, negative_key,
            lambda ids: model.apply(variables, ids, catalog, method="item_vectors"))
        for step, task in objective.assignment:
            parts = losses.retrieval_step_loss(
                out["user_vectors"][step], item_vec, labels[..., task], valid, mask,
                objective.eta, positive_slots=batch["pool_item"].shape[1], shared_vec=shared_vec,
                bce_on_shared=objective.bce_on_shared)
            total = total + objective.weighted(parts)
            metrics.update({f"{name}/s{step}t{task}": v for name, v in parts.items()})
    else:
        valid = batch["cis_item"] > 0
        for step, task in objective.assignment:
            parts = losses.ranking_step_loss(
                out["logits"][step, ..., task], batch["cis_label"][..., task], valid, mask,
                objective.rank_eta)
            total = total + objective.weighted(parts)
            metrics.update({f"{name}/s{step}t{task}": v for name, v in parts.items()})
    metrics["loss"] = total
    return total, metrics
