"""Jitted full-catalogue retrieval evaluation: exact target ranks and top-k, chunk by chunk.

The catalogue (items 1..N; the padding item 0 is never ranked) is scanned in chunks of ``chunk``
items with ``lax.scan``, so device memory is O(B·chunk) on top of the item table and no
users × items score matrix ever exists, on device or host. Scores are float32 inner products at
``Precision.HIGHEST`` (no TF32/bf16 passes on accelerators, which would create spurious ties).

**Sharded catalogue.** The item matrix ``f32[M, d]`` (row i = item i) may be split over devices
and hosts in ``shards`` contiguous blocks of rows (``item_sharding`` says which mesh axes hold
them, see :func:`catalogue_vectors`). Each scan step then scores the next ``chunk`` rows of every
block — on the device that holds it — keeps a top-k (or a rank count) per block, and the blocks
are merged once at the end: ``shards·k`` candidates per user for top-k, a sum of counts for ranks.
One block (the default) is the plain single-device scan.

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
from jax.sharding import NamedSharding, PartitionSpec

_HIGHEST = lax.Precision.HIGHEST


def _constrain(x: jax.Array, sharding: NamedSharding | None, dim: int) -> jax.Array:
    """Pins dimension ``dim`` of ``x`` (the block axis) to the item matrix's mesh axes; the
    other dimensions are left to the partitioner."""
    if sharding is None:
        return x
    spec = [PartitionSpec.UNCONSTRAINED] * x.ndim
    spec[dim] = sharding.spec[0] if len(sharding.spec) else None
    return lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, PartitionSpec(*spec)))


def _block_top_k(x: jax.Array, k: int, sharding: NamedSharding | None) -> tuple[jax.Array,
                                                                               jax.Array]:
    """``lax.top_k`` over the last axis of ``x: f32[B, S, n]``, on each device's own blocks.

    XLA partitions its TopK only along the reduced axis; along batch-like axes it would gather
    every block to every device first. ``shard_map`` keeps each block's top-k where the block is
    (a local op, no parameters involved).
    """
    if sharding is None:
        return lax.top_k(x, k)
    items = sharding.spec[0] if len(sharding.spec) else None
    names = items if isinstance(items, tuple) else (items,)
    spec = PartitionSpec(None if "data" in names else "data", items, None)
    return jax.shard_map(lambda v: tuple(lax.top_k(v, k)), mesh=sharding.mesh, in_specs=(spec,),
                         out_specs=(spec, spec))(x)


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
    num_items: int,
    shards: int = 1,
    item_sharding: NamedSharding | None = None,
) -> Any:
    """Folds ``body(carry, scores f32[B, S, c], ids int32[S, c], allowed bool[B, S, c])`` over
    the catalogue, S = ``shards`` blocks at a time.

    ``item_vecs: f32[M, d]`` is cut into S blocks of R = M/S rows, each padded to a multiple of
    ``c = min(chunk, R)``; ``ids`` are the rows' item ids (0 where the row is not an item) and
    ``allowed`` is False for the padding item 0, rows past ``num_items`` and, when ``exclude:
    int32[B, E]`` is given, the excluded items.
    """
    m, d = item_vecs.shape
    if m % shards:
        raise ValueError(f"item matrix of {m} rows does not split into {shards} equal blocks")
    rows = m // shards
    chunk = max(1, min(int(chunk), rows))
    num_chunks = -(-rows // chunk)
    vecs = _constrain(item_vecs.reshape(shards, rows, d), item_sharding, 0)
    if num_chunks * chunk > rows:
        vecs = jnp.pad(vecs, ((0, 0), (0, num_chunks * chunk - rows), (0, 0)))
    offset = jnp.arange(num_chunks * chunk, dtype=jnp.int32)
    ids = jnp.arange(shards, dtype=jnp.int32)[:, None] * rows + offset[None, :]
    real = (offset[None, :] < rows) & (ids >= 1) & (ids <= num_items)
    ids = _constrain(jnp.where(real, ids, 0), item_sharding, 0)
    sorted_exclude = None if exclude is None else jnp.sort(exclude.astype(jnp.int32), axis=-1)
    batch = user_vec.shape[0]

    def step(carry: Any, start: jax.Array) -> tuple[Any, None]:
        chunk_vecs = lax.dynamic_slice_in_dim(vecs, start, chunk, axis=1)
        chunk_ids = lax.dynamic_slice_in_dim(ids, start, chunk, axis=1)
        scores = jnp.einsum("bd,scd->bsc", user_vec, chunk_vecs, precision=_HIGHEST)
        scores = _constrain(scores, item_sharding, 1)
        allowed = jnp.broadcast_to(chunk_ids[None] > 0, scores.shape)
        if sorted_exclude is not None:
            listed = _listed(sorted_exclude, chunk_ids.reshape(-1))
            allowed = allowed & ~listed.reshape(batch, shards, chunk)
        return body(carry, scores, chunk_ids, allowed), None

    carry, _ = lax.scan(step, init, jnp.arange(num_chunks, dtype=jnp.int32) * chunk)
    return carry


_STATIC = ("chunk", "num_items", "shards", "item_sharding")


@functools.partial(jax.jit, static_argnames=("exclude_history", *_STATIC))
def target_ranks(
    user_vec: jax.Array,
    item_vecs: jax.Array,
    target: jax.Array,
    exclude: jax.Array,
    exclude_history: bool,
    chunk: int = 4096,
    num_items: int | None = None,
    shards: int = 1,
    item_sharding: NamedSharding | None = None,
) -> jax.Array:
    """0-based rank of each target among items 1..N, ties pessimistic (see module docstring).

    Args:
      user_vec: f32[B, d], served user vectors.
      item_vecs: f32[M, d], item-tower vectors of the whole catalogue, row i = item i (row 0 =
        padding; rows past N, if any, are padding too).
      target: int32[B], the held-out item in 1..N; rows with target 0 (padded examples) get rank N
        (never a hit), but should be masked out by the caller anyway.
      exclude: int32[B, E], items to drop from the ranking (0 = padding); ignored unless
        ``exclude_history``. The target is never dropped.
      exclude_history: static; whether to apply ``exclude``.
      chunk: static; items scored per block and scan step (memory O(B·shards·chunk)).
      num_items: static; N (default M - 1).
      shards: static; blocks the item matrix is split into (its shards, when it is sharded).
      item_sharding: static; the item matrix's ``NamedSharding`` (rows over the item axes), to
        keep every block's scores on the device that holds the block.

    Returns:
      int32[B] ranks in 0..N-1.
    """
    num_items = item_vecs.shape[0] - 1 if num_items is None else num_items
    target = target.astype(jnp.int32)
    batch = target.shape[0]
    scan = functools.partial(_scan_catalogue, user_vec, item_vecs, chunk=chunk,
                             num_items=num_items, shards=shards, item_sharding=item_sharding)

    def pick_target(score: jax.Array, scores: jax.Array, ids: jax.Array,
                    allowed: jax.Array) -> jax.Array:
        hit = allowed & (ids[None] == target[:, None, None])
        return score + jnp.sum(jnp.where(hit, scores, 0.0), axis=-1)

    # Per-block partial results, summed once at the end: a block that does not hold the target
    # adds exact zeros, so the target's score is its bits from the scan.
    zeros = jnp.zeros((batch, shards), jnp.float32)
    target_score = scan(None, body=pick_target, init=zeros).sum(axis=-1)

    def count_ahead(count: jax.Array, scores: jax.Array, ids: jax.Array,
                    allowed: jax.Array) -> jax.Array:
        ahead = (allowed & (ids[None] != target[:, None, None])
                 & (scores >= target_score[:, None, None]))
        return count + jnp.sum(ahead, axis=-1, dtype=jnp.int32)

    count = scan(exclude if exclude_history else None, body=count_ahead,
                 init=jnp.zeros((batch, shards), jnp.int32)).sum(axis=-1)
    return jnp.where(target > 0, count, num_items)


@functools.partial(jax.jit, static_argnames=("k", *_STATIC))
def topk_items(
    user_vec: jax.Array,
    item_vecs: jax.Array,
    k: int,
    exclude: jax.Array | None = None,
    chunk: int = 4096,
    num_items: int | None = None,
    shards: int = 1,
    item_sharding: NamedSharding | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Exact top-k items 1..N per user: a running top-k per block, merged across blocks at the end.

    Args:
      user_vec: f32[B, d]; item_vecs: f32[M, d] (row 0 = padding, never returned).
      k: static, number of items to return.
      exclude: optional int32[B, E] items never returned (e.g. the history; 0 = padding).
      chunk, num_items, shards, item_sharding: as for :func:`target_ranks`.

    Returns:
      (scores f32[B, k] descending, ids int32[B, k]); equal scores keep the lower id first. When
      fewer than k items are allowed, the tail holds score -inf and id 0.
    """
    num_items = item_vecs.shape[0] - 1 if num_items is None else num_items
    batch = user_vec.shape[0]

    def merge(best: tuple[jax.Array, jax.Array], scores: jax.Array, ids: jax.Array,
              allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
        # The carried top-k precedes the chunk and ids grow along the scan, so lax.top_k's
        # stable order keeps the lower id first among equal scores.
        chunk_scores, chunk_pos = _block_top_k(jnp.where(allowed, scores, -jnp.inf),
                                               min(k, scores.shape[-1]), item_sharding)
        chunk_ids = jnp.take_along_axis(jnp.broadcast_to(ids[None], scores.shape), chunk_pos,
                                        axis=-1)
        all_scores = jnp.concatenate([best[0], chunk_scores], axis=-1)
        all_ids = jnp.concatenate([best[1], chunk_ids], axis=-1)
        top_scores, top_pos = _block_top_k(all_scores, k, item_sharding)
        return top_scores, jnp.take_along_axis(all_ids, top_pos, axis=-1)

    init = (jnp.full((batch, shards, k), -jnp.inf, jnp.float32),
            jnp.zeros((batch, shards, k), jnp.int32))
    block_scores, block_ids = _scan_catalogue(user_vec, item_vecs, exclude, chunk, merge, init,
                                              num_items, shards, item_sharding)
    # Blocks hold increasing ids, so block-major order keeps ties in id order across blocks too.
    scores, pos = lax.top_k(block_scores.reshape(batch, shards * k), k)
    ids = jnp.take_along_axis(block_ids.reshape(batch, shards * k), pos, axis=-1)
    return scores, jnp.where(jnp.isneginf(scores), 0, ids)


def catalogue_layout(num_items: int, shards: int, chunk: int) -> tuple[int, int]:
    """``(rows per block R, chunk c)`` of a catalogue of items 0..N cut into ``shards`` blocks,
    R a multiple of c, so every block is scanned in whole chunks."""
    per_block = -(-(num_items + 1) // shards)
    chunk = max(1, min(int(chunk), per_block))
    return -(-per_block // chunk) * chunk, chunk


def catalogue_vectors(item_fn: Callable[[jax.Array], jax.Array], num_items: int, shards: int,
                      chunk: int, item_sharding: NamedSharding | None = None) -> jax.Array:
    """f32[S·R, d], row i = ``item_fn`` of item i (rows past N: of the padding item 0).

    Call it under ``jit`` with ``out_shardings=item_sharding``. Block s (rows s·R..(s+1)·R, see
    :func:`catalogue_layout`) is computed c ids at a time on the devices that hold it, so memory
    stays O(S·c·d) beyond the result and no device computes or stores the whole matrix.
    ``item_fn(ids: int32[S, c]) -> f32[S, c, d]`` is the item tower.
    """
    rows, chunk = catalogue_layout(num_items, shards, chunk)
    ids = (jnp.arange(shards, dtype=jnp.int32)[:, None, None] * rows
           + jnp.arange(rows, dtype=jnp.int32).reshape(1, rows // chunk, chunk))
    ids = jnp.where(ids <= num_items, ids, 0).transpose(1, 0, 2)  # [R/c, S, c]

    def step(_, chunk_ids):
        vecs = item_fn(_constrain(chunk_ids, item_sharding, 0))
        return None, _constrain(vecs, item_sharding, 0)

    _, vecs = lax.scan(step, None, _constrain(ids, item_sharding, 1))  # [R/c, S, c, d]
    vecs = _constrain(vecs.transpose(1, 0, 2, 3), item_sharding, 0)
    return vecs.reshape(shards * rows, vecs.shape[-1])


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
