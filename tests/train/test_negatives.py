"""Negative samplers: ranges, determinism, popularity frequencies, same-category, collisions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.train.negatives import (
    build_negative_tables,
    catalogue_mask,
    in_batch_negatives,
    negative_mask,
    popular_negatives,
    same_category_negatives,
    sample_negatives,
    uniform_negatives,
)

NUM_ITEMS = 12
# Items 1..12; category 0 = unknown for items 11 and 12; item 10 is alone in category 4.
CATEGORY = np.array([0, 1, 2, 1, 3, 2, 1, 3, 2, 1, 4, 0, 0], np.int32)
COUNTS = np.array([50, 5, 0, 1, 8, 3, 0, 2, 1, 4, 6, 7, 0], np.float32)


_same_category = jax.jit(same_category_negatives, static_argnames="num")


@pytest.fixture(scope="module")
def tables():
    return build_negative_tables(COUNTS, CATEGORY)


def test_tables_index_every_item_under_its_category(tables):
    offsets = np.asarray(tables.category_offsets)
    items = np.asarray(tables.category_items)
    assert tables.num_items == NUM_ITEMS
    assert sorted(items.tolist()) == list(range(1, NUM_ITEMS + 1))
    for category in range(5):
        members = items[offsets[category]:offsets[category + 1]]
        expected = [v for v in range(1, NUM_ITEMS + 1) if CATEGORY[v] == category]
        assert members.tolist() == expected


def test_uniform_draws_cover_only_real_items_and_are_deterministic_by_key():
    key = jax.random.key(0)
    draws = np.asarray(uniform_negatives(key, (2000,), NUM_ITEMS))
    assert draws.min() >= 1 and draws.max() <= NUM_ITEMS
    assert set(draws.tolist()) == set(range(1, NUM_ITEMS + 1))
    np.testing.assert_array_equal(draws, uniform_negatives(key, (2000,), NUM_ITEMS))
    assert not np.array_equal(draws, uniform_negatives(jax.random.key(1), (2000,), NUM_ITEMS))


def test_popular_draw_frequencies_are_proportional_to_counts(tables):
    num_draws = 200_000
    draws = np.asarray(popular_negatives(jax.random.key(3), (num_draws,), tables.popularity_cdf))
    frequency = np.bincount(draws, minlength=NUM_ITEMS + 1) / num_draws
    weights = COUNTS.astype(np.float64).copy()
    weights[0] = 0.0  # padding never drawn, whatever its count
    expected = weights / weights.sum()
    sigma = np.sqrt(expected * (1 - expected) / num_draws)
    assert np.all(np.abs(frequency - expected) <= 5 * sigma + 1e-12)
    assert np.all(frequency[weights == 0] == 0)


def test_popular_draw_never_returns_zero_count_tail_item():
    counts = np.array([0, 1, 1, 0, 0], np.float32)
    table = build_negative_tables(counts, np.zeros(5, np.int32))
    cdf_with_rounding = table.popularity_cdf.at[-3:].set(0.999)  # a draw above it must clamp
    draws = np.asarray(popular_negatives(jax.random.key(0), (20_000,), cdf_with_rounding))
    assert set(draws.tolist()) <= {1, 2}


def test_same_category_negatives_share_the_anchor_category(tables):
    positives = jnp.array([[1, 0], [2, 0], [4, 0], [10, 0]], jnp.int32)
    draws = np.asarray(_same_category(jax.random.key(4), positives, 50, tables))
    for row, anchor in zip(draws, [1, 2, 4, 10], strict=True):
        assert np.all(CATEGORY[row] == CATEGORY[anchor])
    assert np.all(draws[3] == 10)  # a one-item category can only return the anchor itself
    members_of_1 = {v for v in range(1, NUM_ITEMS + 1) if CATEGORY[v] == 1}
    assert set(draws[0].tolist()) == members_of_1


def test_same_category_anchor_is_one_of_the_examples_positives(tables):
    positives = jnp.array([[2, 4, 0]], jnp.int32)
    draws = np.asarray(_same_category(jax.random.key(5), positives, 200, tables))
    assert set(CATEGORY[draws[0]].tolist()) == {2, 3}


def test_same_category_falls_back_to_uniform_without_a_known_category(tables):
    positives = jnp.array([[11, 12], [0, 0]], jnp.int32)
    draws = np.asarray(_same_category(jax.random.key(6), positives, 300, tables))
    assert draws.min() >= 1 and draws.max() <= NUM_ITEMS
    assert len(set(draws[0].tolist())) > 3  # not stuck on one category


def test_negative_mask_drops_collisions_and_padding():
    negatives = jnp.array([[3, 5, 0, 7], [2, 2, 9, 1]], jnp.int32)
    positives = jnp.array([[5, 0], [1, 2]], jnp.int32)
    np.testing.assert_array_equal(
        negative_mask(negatives, positives),
        [[True, False, False, True], [False, False, True, False]])


def test_catalogue_mask_drops_exactly_the_excluded_items_like_negative_mask():
    excluded = jnp.array([[3, 0, 3, 6], [1, 2, 0, 0], [0, 0, 0, 0]], jnp.int32)
    mask = catalogue_mask(excluded, 6)
    np.testing.assert_array_equal(mask, [
        [True, True, False, True, True, False],
        [False, False, True, True, True, True],
        [True] * 6])
    every_item = jnp.broadcast_to(jnp.arange(1, 7, dtype=jnp.int32), (3, 6))
    np.testing.assert_array_equal(mask, negative_mask(every_item, excluded))


def test_in_batch_negatives_are_other_examples_positives():
    positives = jnp.array([[4, 0], [7, 4], [9, 2]], jnp.int32)
    ids, mask = in_batch_negatives(positives)
    np.testing.assert_array_equal(ids, np.tile([4, 0, 7, 4, 9, 2], (3, 1)))
    np.testing.assert_array_equal(mask, [
        [False, False, True, False, True, True],   # 4 from example 1 collides with own 4
        [False, False, False, False, True, True],
        [True, False, True, True, False, False],
    ])


def test_sample_negatives_concatenates_sources_in_order_and_is_deterministic(tables):
    counts = {"uniform": 3, "popular": 4, "same_category": 2}
    positives = jnp.array([[1, 5], [8, 0]], jnp.int32)
    sample = jax.jit(functools.partial(sample_negatives, counts=counts))
    ids = np.asarray(sample(jax.random.key(7), positives, tables=tables))
    assert ids.shape == (2, 9) and ids.dtype == np.int32
    assert ids.min() >= 1 and ids.max() <= NUM_ITEMS
    assert np.all(COUNTS[ids[:, 3:7]] > 0)  # the popularity block never holds a zero-count item
    assert set(CATEGORY[ids[1, 7:]].tolist()) == {CATEGORY[8]}
    np.testing.assert_array_equal(ids, sample(jax.random.key(7), positives, tables=tables))


def test_sample_negatives_rejects_unknown_source(tables):
    with pytest.raises(ValueError, match="unknown sources"):
        sample_negatives(jax.random.key(0), jnp.ones((1, 1), jnp.int32), {"hard": 2}, tables)
