"""Chunked full-catalogue ranking against brute-force NumPy, including ties and exclusion."""

from __future__ import annotations

import numpy as np
import pytest

from onepiece_jax.eval.retrieval import protocol_string, target_ranks, topk_items

NUM_ITEMS = 103  # not a multiple of CHUNK
CHUNK = 16
DIM = 8


def _brute_force_ranks(user, items, target, exclude):
    """Pessimistic 0-based ranks over items 1..N, scored in float64, excluding `exclude` rows."""
    ranks = []
    for b in range(len(user)):
        scores = items.astype(np.float64) @ user[b].astype(np.float64)
        target_score = scores[target[b]]
        dropped = set(exclude[b].tolist()) - {target[b]} if exclude is not None else set()
        ranks.append(sum(1 for v in range(1, len(items))
                         if v != target[b] and v not in dropped and scores[v] >= target_score))
    return np.array(ranks)


def _case(seed: int, integer: bool = False):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: exact float32 dot products with plenty of ties
        user = rng.integers(-1, 2, size=(6, DIM)).astype(np.float32)
        items = rng.integers(-1, 2, size=(NUM_ITEMS + 1, DIM)).astype(np.float32)
    else:
        user = rng.normal(size=(6, DIM)).astype(np.float32)
        items = rng.normal(size=(NUM_ITEMS + 1, DIM)).astype(np.float32)
    items[0] = 100.0  # the padding row would win everything if it were ranked
    target = rng.integers(1, NUM_ITEMS + 1, size=6).astype(np.int32)
    exclude = rng.integers(0, NUM_ITEMS + 1, size=(6, 12)).astype(np.int32)
    exclude[:, 0] = target  # the target is listed in its own history: it must still be ranked
    exclude[:, 1] = exclude[:, 2]  # duplicates in the history are harmless
    exclude[:, -3:] = 0  # padding
    return user, items, target, exclude


@pytest.mark.parametrize("integer", [False, True], ids=["gaussian", "integer-ties"])
@pytest.mark.parametrize("exclude_history", [False, True])
def test_target_ranks_equal_brute_force(integer, exclude_history):
    user, items, target, exclude = _case(0, integer)
    ranks = np.asarray(target_ranks(user, items, target, exclude, exclude_history, CHUNK))
    expected = _brute_force_ranks(user, items, target, exclude if exclude_history else None)
    np.testing.assert_array_equal(ranks, expected)


def test_target_ranks_count_ties_pessimistically():
    items = np.zeros((NUM_ITEMS + 1, DIM), np.float32)
    user = np.ones((2, DIM), np.float32)
    target = np.array([5, 50], np.int32)
    exclude = np.array([[1, 2, 3], [0, 0, 0]], np.int32)
    ranks = np.asarray(target_ranks(user, items, target, exclude, True, CHUNK))
    # Every item ties with the target: the target goes after all of them.
    np.testing.assert_array_equal(ranks, [NUM_ITEMS - 1 - 3, NUM_ITEMS - 1])


def test_target_ranks_count_a_duplicated_target_vector_as_a_tie():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(NUM_ITEMS + 1, 64)).astype(np.float32)
    user = rng.normal(size=(32, 64)).astype(np.float32)
    target = rng.permutation(np.arange(1, NUM_ITEMS // 2))[:32].astype(np.int32)
    items[target + NUM_ITEMS // 2] = items[target]  # each target has an exact twin
    no_exclude = np.zeros((32, 1), np.int32)
    ranks = np.asarray(target_ranks(user, items, target, no_exclude, False, CHUNK))
    np.testing.assert_array_equal(ranks, _brute_force_ranks(user, items, target, None))


def test_target_ranks_of_padded_examples_are_never_hits():
    user, items, target, exclude = _case(2)
    target[3] = 0
    ranks = np.asarray(target_ranks(user, items, target, exclude, True, CHUNK))
    assert ranks[3] == NUM_ITEMS


@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("k", [5, 40])  # 40 > CHUNK: the merge must keep more than one chunk's top
def test_topk_items_equal_numpy_argsort(k, with_exclude):
    user, items, _, exclude = _case(3)
    scores, ids = topk_items(user, items, k, exclude if with_exclude else None, CHUNK)
    scores, ids = np.asarray(scores), np.asarray(ids)
    for b in range(len(user)):
        item_scores = items[1:].astype(np.float64) @ user[b].astype(np.float64)
        if with_exclude:
            item_scores[exclude[b][exclude[b] > 0] - 1] = -np.inf
        expected = np.argsort(-item_scores, kind="stable")[:k] + 1
        np.testing.assert_array_equal(ids[b], expected)
        np.testing.assert_allclose(scores[b], item_scores[expected - 1], rtol=1e-5)


def test_topk_items_pads_with_id_zero_when_k_exceeds_the_catalogue():
    rng = np.random.default_rng(4)
    items = rng.normal(size=(4, DIM)).astype(np.float32)
    scores, ids = topk_items(rng.normal(size=(1, DIM)).astype(np.float32), items, 5,
                             np.array([[2]], np.int32), 2)
    assert sorted(np.asarray(ids)[0, :2].tolist()) == [1, 3]
    assert np.asarray(ids)[0, 2:].tolist() == [0, 0, 0]
    assert np.all(np.isneginf(np.asarray(scores)[0, 2:]))


def test_protocol_string_names_every_choice():
    text = protocol_string("ml100k", "test", True, (10, 50, 200), num_items=1682)
    assert text == ("ml100k | test | leave-one-out | full catalogue (1682 items) | "
                    "history excluded | ties pessimistic | HR/NDCG/Recall@10,50,200, MRR")
    assert "history included" in protocol_string("ml1m", "valid", False, (10,), num_items=3706)
