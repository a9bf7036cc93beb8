"""Item search over exported vectors: the exact index is exact, HNSW is close to it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.export.index import ExactIndex, HnswIndex, recall_at_k


def _data(n: int = 1000, d: int = 16, q: int = 37, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    vectors = (centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    return vectors, np.arange(101, 101 + n), rng.normal(size=(q, d)).astype(np.float32)


@pytest.mark.parametrize("chunk, query_batch", [(128, 16), (4096, 256)])
def test_exact_index_matches_numpy_brute_force_across_chunks_and_query_batches(chunk,
                                                                                query_batch):
    vectors, ids, queries = _data()
    scores, found = ExactIndex(vectors, ids, chunk=chunk, query_batch=query_batch).search(
        queries, 10)
    full = queries @ vectors.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found, ids[want])
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-5)


def test_exact_index_scores_bfloat16_vectors_in_float32():
    vectors, ids, queries = _data(n=300)
    half = np.asarray(jnp.asarray(vectors, jnp.bfloat16))
    scores, found = ExactIndex(half, ids, chunk=64).search(queries, 5)
    full = queries @ half.astype(np.float32).T
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5,
                               atol=1e-5)


def test_exact_index_refuses_k_beyond_the_catalogue_and_wrong_query_width():
    vectors, ids, queries = _data(n=50)
    index = ExactIndex(vectors, ids)
    with pytest.raises(ValueError, match=r"k=51 must be in \[1, 50\]"):
        index.search(queries, 51)
    with pytest.raises(ValueError, match=r"expected \[Q, 16\]"):
        index.search(queries[:, :8], 5)


def test_hnsw_recall_against_the_exact_index_is_high_on_clustered_vectors():
    vectors, ids, queries = _data(n=3000)
    _, exact = ExactIndex(vectors, ids).search(queries, 20)
    scores, approx = HnswIndex(vectors, ids).search(queries, 20)
    assert recall_at_k(approx, exact) >= 0.95
    assert set(np.unique(approx)) <= set(ids)
    rows = approx - ids[0]  # the found items are rescored exactly, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[rows]),
                               rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_recall_at_k_counts_shared_ids_per_query():
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == 1 / 3
