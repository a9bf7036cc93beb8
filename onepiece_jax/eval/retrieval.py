"""Jitted full-catalogue retrieval evaluation: exact target ranks and top-k, chunk by chunk.

The catalogue (items 1..N; the padding item 0 is never ranked) is scanned in chunks of ``chunk``
items with ``lax.scan``, so device memory is O(B·chunk) on top of the item table and no
users × items score matrix ever exists, on device or host. Scores are float32 inner products at
``Precision.HIGHEST`` (no TF32/bf16 passes on accelerators, which would create spurious ties).

**Tie rule (pessimistic).** 0-based
``rank = #{items v ≠ target, not excluded : score(v) >= score(target)}``. A model that scores
everything equally therefore gets the worst rank, never the best.
Ties are decided bit-exactly: a first pass reads the target's score out of the very same chunked
matmul that scores the catalogue in the second pass. (A separate gather-and-dot rounds differently
in the last bit and silently turns ties with duplicated item vectors into wins.) The price is two
passes over the catalogue, i.e. twice the scoring FLOPs of a single pass.

**History exclusion.** With ``exclude_history`` the items listed in ``exclude`` (the user's
history) are removed from the ranking, except the target itself, which is always ranked
(leave-one-out targets can be re-consumptions). Membership is tested with a per-row binary search
in the sorted exclude list, so the cost is O(B·chunk·log E) and memory O(B·chunk).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


def _listed(sorted_exclude: jax.Array, ids: jax.Array) -> jax.Array:
    """bool[B, c]: whether each of ``ids: int32[c]`` appears in row b of ``sorted_exclude:
    int32[B, E]`` (sorted ascending)."""
    if sorted_exclude.shape[-1] == 0:
        return jnp.zeros((sorted_exclude.shape[0], ids.shape[0]), bool)
    position = jax.vmap(lambda row: jnp.searchsorted(row, ids))(sorted_exclude)
    position = jnp.minimum(position, sorted_exclude.shape[-1] - 1)
    return jnp.take_along_axis(sorted_exclude, position, axis=-1) == ids[None, :]


def _scan_catalogue(
    user_vec: jax.Array,
    item_vecs: jax.Array,
    exclude: jax.Array | None,
    chunk: int,
    body: Callable[[Any, jax.Array, jax.Array, jax.Array], Any],
    init: Any,
) -> Any:
    """Folds ``body(carry, scores f32[B, c], ids int32[c], allowed bool[B, c])`` over the catalogue.

    ``item_vecs: f32[N+1, d]``; items 1..N are padded to a multiple of ``c = min(chunk, N)``;
    ``allowed`` is False for the padding beyond N and, when ``exclude: int32[B, E]`` is given, for
    the excluded items.
    """
    num_items = item_vecs.shape[0] - 1
    chunk = max(1, min(int(chunk), num_items))
    num_chunks = -(-num_items // chunk)
    vecs = jnp.pad(item_vecs[1:], ((0, num_chunks * chunk - num_items), (0, 0)))
    vecs = vecs.reshape(num_chunks, chunk, item_vecs.shape[1])
    ids = jnp.arange(1, num_chunks * chunk + 1, dtype=jnp.int32).reshape(num_chunks, chunk)
    sorted_exclude = None if exclude is None else jnp.sort(exclude.astype(jnp.int32), axis=-1)

    def step(carry: Any, xs: tuple[jax.Array, jax.Array]) -> tuple[Any, None]:
        chunk_vecs, chunk_ids = xs
        scores = jnp.matmul(user_vec, chunk_vecs.T, precision=_HIGHEST)
        allowed = jnp.broadcast_to(chunk_ids <= num_items, scores.shape)
        if sorted_exclude is not None:
            allowed = allowed & ~_listed(sorted_exclude, chunk_ids)
        return body(carry, scores, chunk_ids, allowed), None

    carry, _ = lax.scan(step, init, (vecs, ids))
    return carry


@functools.partial(jax.jit, static_argnames=("exclude_history", "chunk"))
def target_ranks(
    user_vec: jax.Array,
    item_vecs: jax.Array,
    target: jax.Array,
    exclude: jax.Array,
    exclude_history: bool,
    chunk: int = 4096,
) -> jax.Array:
    """0-based rank of each target among items 1..N, ties pessimistic (see module docstring).

    Args:
      user_vec: f32[B, d], served user vectors.
      item_vecs: f32[N+1, d], item-tower vectors of the whole catalogue (row 0 = padding).
      target: int32[B], the held-out item in 1..N; rows with target 0 (padded examples) get rank N
        (never a hit), but should be masked out by the caller anyway.
      exclude: int32[B, E], items to drop from the ranking (0 = padding); ignored unless
        ``exclude_history``. The target is never dropped.
      exclude_history: static; whether to apply ``exclude``.
      chunk: static; items scored per scan step (memory O(B·chunk)).

    Returns:
      int32[B] ranks in 0..N-1.
    """
    num_items = item_vecs.shape[0] - 1
    target = target.astype(jnp.int32)

    def pick_target(score: jax.Array, scores: jax.Array, ids: jax.Array,
                    allowed: jax.Array) -> jax.Array:
        del allowed
        return score + jnp.sum(jnp.where(ids[None, :] == target[:, None], scores, 0.0), axis=-1)

    target_score = _scan_catalogue(user_vec, item_vecs, None, chunk, pick_target,
                                   jnp.zeros(target.shape, jnp.float32))

    def count_ahead(count: jax.Array, scores: jax.Array, ids: jax.Array,
                    allowed: jax.Array) -> jax.Array:
        ahead = allowed & (ids[None, :] != target[:, None]) & (scores >= target_score[:, None])
        return count + jnp.sum(ahead, axis=-1, dtype=jnp.int32)

    count = _scan_catalogue(user_vec, item_vecs, exclude if exclude_history else None, chunk,
                            count_ahead, jnp.zeros(target.shape, jnp.int32))
    return jnp.where(target > 0, count, num_items)


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def topk_items(
    user_vec: jax.Array,
    item_vecs: jax.Array,
    k: int,
    exclude: jax.Array | None = None,
    chunk: int = 4096,
) -> tuple[jax.Array, jax.Array]:
    """Exact top-k items 1..N per user, merging per-chunk ``lax.top_k`` results.

    Args:
      user_vec: f32[B, d]; item_vecs: f32[N+1, d] (row 0 = padding, never returned).
      k: static, number of items to return.
      exclude: optional int32[B, E] items never returned (e.g. the history; 0 = padding).
      chunk: static, items scored per scan step.

    Returns:
      (scores f32[B, k] descending, ids int32[B, k]); equal scores keep the lower id first. When
      fewer than k items are allowed, the tail holds score -inf and id 0.
    """
    batch = user_vec.shape[0]

    def merge(best: tuple[jax.Array, jax.Array], scores: jax.Array, ids: jax.Array,
              allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
        chunk_scores, chunk_pos = lax.top_k(jnp.where(allowed, scores, -jnp.inf),
                                            min(k, scores.shape[-1]))
        all_scores = jnp.concatenate([best[0], chunk_scores], axis=-1)
        all_ids = jnp.concatenate([best[1], ids[chunk_pos]], axis=-1)
        top_scores, top_pos = lax.top_k(all_scores, k)
        return top_scores, jnp.take_along_axis(all_ids, top_pos, axis=-1)

    init = (jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.zeros((batch, k), jnp.int32))
    scores, ids = _scan_catalogue(user_vec, item_vecs, exclude, chunk, merge, init)
    return scores, jnp.where(jnp.isneginf(scores), 0, ids)


def protocol_string(
    dataset: str,
    split: str,
    exclude_history: bool,
    ks: Sequence[int],
    *,
    num_items: int,
    scheme: str = "leave-one-out",
) -> str:
    """One line stating how a retrieval number was obtained (SPEC §5: always print it with the
    number), e.g. ``ml100k | test | leave-one-out | full catalogue (1682 items) | history excluded
    | ties pessimistic | HR/NDCG/Recall@10,50,200, MRR``."""
    history = "history excluded" if exclude_history else "history included"
    cutoffs = ",".join(str(int(k)) for k in ks)
    return (f"{dataset} | {split} | {scheme} | full catalogue ({num_items} items) | {history} | "
            f"ties pessimistic | HR/NDCG/Recall@{cutoffs}, MRR")
