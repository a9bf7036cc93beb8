"""Jittable negative samplers for retrieval training (PAPER_NOTES §5.2 sample construction, §9 #11).

On public data the paper's "unexposed items from the ranking stage's top-500" are replaced by
uniform and popularity-proportional samples; "same-category" hard negatives are kept as is.

The lookup tables are built once on the host (``build_negative_tables``) and passed to the jitted
samplers as a pytree of arrays; the catalogue size is read from array shapes, so nothing but the
per-source counts needs to be static.

**Collisions.** A sampled negative can be one of the example's own positives (or the padding id 0
for in-batch negatives). Samplers do not reject them, which would need a data-dependent loop;
instead ``negative_mask`` marks each collision False so that the loss *drops* it — a collision is
never counted as a negative.

**History.** With ``loss.negatives.exclude_history`` the items of the example's history (IH) are
dropped as negatives too: under the history-excluded evaluation (HSTU's protocol) they are never
ranked, so pushing them down only teaches the model what the metric does not ask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SOURCES = ("uniform", "popular", "same_category")


class NegativeTables(NamedTuple):
    """Device-side lookup tables for the samplers (a pytree of arrays).

    Attributes:
      popularity_cdf: f32[N+1], normalised cumulative popularity; entry 0 (padding) has weight 0.
      item_category: int32[N+1], category of each item, 0 = unknown (and for the padding item).
      category_items: int32[N], items 1..N sorted by category (stable, so by id within a category).
      category_offsets: int32[num_categories + 1], ``category_items[offsets[c]:offsets[c+1]]`` are
        the items of category c.
    """

    popularity_cdf: jax.Array
    item_category: jax.Array
    category_items: jax.Array
    category_offsets: jax.Array

    @property
    def num_items(self) -> int:
        return self.popularity_cdf.shape[0] - 1


def build_negative_tables(counts: np.ndarray, item_category: np.ndarray) -> NegativeTables:
    """Builds ``NegativeTables`` on the host.

    Args:
      counts: float[N+1], interaction count (any non-negative weight) per item; entry 0 ignored.
      item_category: int[N+1], category id per item, 0 = unknown.

    The CDF is accumulated in float64 before the float32 cast so large catalogues keep their tail.
    """
    counts = np.asarray(counts, dtype=np.float64).copy()
    item_category = np.asarray(item_category, dtype=np.int64)
    if counts.ndim != 1 or counts.shape != item_category.shape:
        raise ValueError(f"counts {counts.shape} and item_category {item_category.shape} must both "
                         "have shape [num_items + 1]")
    if np.any(counts < 0) or np.any(item_category < 0):
        raise ValueError("counts and item_category must be non-negative")
    counts[0] = 0.0
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts: at least one item 1..N needs a positive count")
    cdf = np.cumsum(counts) / total

    items = np.arange(1, counts.shape[0])
    categories = item_category[1:]
    order = np.argsort(categories, kind="stable")
    offsets = np.searchsorted(categories[order], np.arange(categories.max(initial=0) + 2))
    return NegativeTables(
        popularity_cdf=jnp.asarray(cdf, dtype=jnp.float32),
        item_category=jnp.asarray(item_category, dtype=jnp.int32),
        category_items=jnp.asarray(items[order], dtype=jnp.int32),
        category_offsets=jnp.asarray(offsets, dtype=jnp.int32),
    )


def uniform_negatives(key: jax.Array, shape: tuple[int, ...], num_items: int) -> jax.Array:
    """int32[shape] items drawn uniformly from 1..num_items."""
    return jax.random.randint(key, shape, 1, num_items + 1, dtype=jnp.int32)


def popular_negatives(
    key: jax.Array, shape: tuple[int, ...], popularity_cdf: jax.Array
) -> jax.Array:
    """int32[shape] items drawn with probability ∝ count, by inverse CDF (O(log N) per draw).

    ``popularity_cdf: f32[N+1]`` as in ``NegativeTables``. ``searchsorted(side='right')`` returns
    the first index whose CDF exceeds the uniform draw, so zero-count items (including 0) are never
    drawn; a draw rounding past the float32 CDF's last value is clamped to the last item with a
    positive count.
    """
    uniform = jax.random.uniform(key, shape, dtype=jnp.float32)
    index = jnp.searchsorted(popularity_cdf, uniform, side="right")
    increments = jnp.diff(popularity_cdf, prepend=0.0)
    last_positive = jnp.max(jnp.where(increments > 0, jnp.arange(popularity_cdf.shape[0]), 0))
    return jnp.minimum(index, last_positive).astype(jnp.int32)


def same_category_negatives(
    key: jax.Array, positives: jax.Array, num: int, tables: NegativeTables
) -> jax.Array:
    """int32[B, num] hard negatives sharing a category with one of each example's positives.

    ``positives: int32[B, P]`` (0 = padding). Each draw picks one of the example's valid positives
    uniformly, then an item uniformly among that positive's category. Draws whose anchor has no
    known category (category 0, or an example without positives) fall back to a uniform item. The
    anchor itself can be drawn (always, for a one-item category): ``negative_mask`` drops it.
    """
    anchor_key, item_key, fallback_key = jax.random.split(key, 3)
    batch = positives.shape[0]
    anchor_logits = jnp.where(positives > 0, 0.0, -jnp.inf)
    has_positive = jnp.any(positives > 0, axis=-1, keepdims=True)
    anchor_logits = jnp.where(has_positive, anchor_logits, 0.0)
    slot = jax.random.categorical(anchor_key, anchor_logits[:, None, :], shape=(batch, num))
    anchor = jnp.take_along_axis(positives, slot, axis=-1)

    category = tables.item_category[anchor]
    start = tables.category_offsets[category]
    size = tables.category_offsets[category + 1] - start
    draw = jnp.floor(jax.random.uniform(item_key, (batch, num)) * size).astype(jnp.int32)
    in_category = tables.category_items[start + jnp.minimum(draw, jnp.maximum(size - 1, 0))]
    usable = (anchor > 0) & (category > 0) & (size > 0)
    fallback = uniform_negatives(fallback_key, (batch, num), tables.num_items)
    return jnp.where(usable, in_category, fallback)


def in_batch_negatives(positives: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The other examples' positives as negatives.

    Args:
      positives: int32[B, P] (use ``target[:, None]`` for one target per example), 0 = padding.

    Returns:
      ids: int32[B, B·P], row b lists every positive of the batch (the same for every row, so a
        loss can gather item vectors once).
      mask: bool[B, B·P], True where the id comes from another example, is not padding and is not
        one of example b's own positives.
    """
    batch, per_example = positives.shape
    ids = jnp.broadcast_to(positives.reshape(1, batch * per_example), (batch, batch * per_example))
    owner = jnp.repeat(jnp.arange(batch), per_example)
    other = owner[None, :] != jnp.arange(batch)[:, None]
    return ids, other & negative_mask(ids, positives)


def negative_mask(negatives: jax.Array, positives: jax.Array) -> jax.Array:
    """bool[B, N_neg]: False where ``negatives: int32[B, N_neg]`` is padding (0) or collides with
    one of the example's own ``positives: int32[B, P]``."""
    collision = jnp.any(negatives[:, :, None] == positives[:, None, :], axis=-1)
    return (negatives > 0) & ~collision


def sample_negatives(
    key: jax.Array,
    positives: jax.Array,
    counts: Mapping[str, int],
    tables: NegativeTables,
) -> jax.Array:
    """Samples and concatenates negatives from several sources, in the order of ``SOURCES``.

    Args:
      key: a ``jax.random`` key; the result is a pure function of it.
      positives: int32[B, P], the example's positives (0 = padding); same-category anchors.
      counts: number of draws per example for each source in ``SOURCES`` (missing = 0). They fix
        the output shape, so they must be static (close over them or mark them static under jit).
      tables: ``NegativeTables`` from ``build_negative_tables``.

    Returns:
      int32[B, N_neg] with N_neg = Σ counts; pair it with ``negative_mask(ids, positives)``.
    """
    unknown = set(counts) - set(SOURCES)
    if unknown:
        raise ValueError(f"sample_negatives: unknown sources {sorted(unknown)}; expected {SOURCES}")
    batch = positives.shape[0]
    keys = jax.random.split(key, len(SOURCES))
    parts = []
    for source, source_key in zip(SOURCES, keys, strict=True):
        num = int(counts.get(source, 0))
        if num <= 0:
            continue
        if source == "uniform":
            parts.append(uniform_negatives(source_key, (batch, num), tables.num_items))
        elif source == "popular":
            parts.append(popular_negatives(source_key, (batch, num), tables.popularity_cdf))
        else:
            parts.append(same_category_negatives(source_key, positives, num, tables))
    if not parts:
        return jnp.zeros((batch, 0), jnp.int32)
    return jnp.concatenate(parts, axis=-1)


def catalogue_mask(excluded: jax.Array, num_items: int) -> jax.Array:
    """bool[B, N]: column v-1 is True where item v (1..N) is a usable catalogue negative for
    example b, i.e. not among ``excluded: int32[B, E]`` (its positives, and its history with
    ``exclude_history``; 0 = padding). A scatter, so it costs B·(N + E), not B·N·E."""
    rows = jnp.arange(excluded.shape[0])[:, None]
    seen = jnp.zeros((excluded.shape[0], num_items + 1), bool).at[rows, excluded].set(True)
    return ~seen[:, 1:]
