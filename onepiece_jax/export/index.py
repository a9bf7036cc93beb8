"""Top-k item search over a bundle's item vectors: exact brute force (jitted, batched) and an
approximate HNSW index (``hnswlib``), with recall@k of the one against the other.

Like ``serve.py`` this file imports only numpy and jax (hnswlib when an ANN index is built), so
``onepiece export`` copies it into every retrieval bundle as ``index.py``. Scores are inner
products ⟨r_K, z_v⟩, the retrieval score the model was trained with (SPEC §4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_blocks(queries: jax.Array, blocks: jax.Array, valid: jax.Array,
                  k: int) -> tuple[jax.Array, jax.Array]:
    """queries: f32[Q, d]; blocks: f32|bf16[S, chunk, d]; valid: bool[S, chunk] → the best k
    (scores f32[Q, k], row ids int32[Q, k]), one block at a time so memory is Q × chunk."""
    q, chunk = queries.shape[0], blocks.shape[1]

    def step(carry, block):
        best, best_rows = carry
        vectors, ok, first = block
        scores = jnp.dot(queries, vectors.astype(jnp.float32).T,
                         precision=jax.lax.Precision.HIGHEST)
        scores = jnp.where(ok[None], scores, -jnp.inf)
        rows = jnp.broadcast_to(first + jnp.arange(chunk, dtype=jnp.int32), (q, chunk))
        top, pos = jax.lax.top_k(jnp.concatenate([best, scores], 1), k)
        return (top, jnp.take_along_axis(jnp.concatenate([best_rows, rows], 1), pos, 1)), None

    init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.zeros((q, k), jnp.int32))
    firsts = jnp.arange(blocks.shape[0], dtype=jnp.int32) * chunk
    (scores, rows), _ = jax.lax.scan(step, init, (blocks, valid, firsts))
    return scores, rows


class ExactIndex:
    """Brute-force maximum inner product search, exact.

    vectors: f32|bf16[N, d] (bf16 is scored in f32); ids: int[N], the id each row stands for.
    The item matrix is put on the device once, in blocks of ``chunk`` rows scanned with a running
    top-k; queries go in batches of at most ``query_batch``, padded to a power of two, so a
    server compiles a handful of programs, whatever its request sizes.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, *, chunk: int = 65536,
                 query_batch: int = 256):
        vectors, ids = np.asarray(vectors), np.asarray(ids)
        if vectors.ndim != 2 or ids.shape != (vectors.shape[0],):
            raise ValueError(f"ExactIndex: vectors {vectors.shape} and ids {ids.shape} must be "
                             "[N, d] and [N]")
        n, d = vectors.shape
        chunk = min(chunk, _pow2_at_least(n))
        blocks = -(-n // chunk)
        padded = np.zeros((blocks * chunk, d), vectors.dtype)
        padded[:n] = vectors
        self.size, self.dim, self.ids = n, d, ids
        self.query_batch = query_batch
        self._blocks = jax.device_put(padded.reshape(blocks, chunk, d))
        self._valid = jax.device_put((np.arange(blocks * chunk) < n).reshape(blocks, chunk))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries: f32[Q, d] → (scores f32[Q, k], ids[Q, k]), best first."""
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"ExactIndex.search: queries have shape {queries.shape}; expected "
                             f"[Q, {self.dim}]")
        if not 1 <= k <= self.size:
            raise ValueError(f"ExactIndex.search: k={k} must be in [1, {self.size}]")
        scores, rows = [], []
        for lo in range(0, queries.shape[0], self.query_batch):
            part = queries[lo:lo + self.query_batch]
            pad = min(_pow2_at_least(part.shape[0]), self.query_batch) - part.shape[0]
            s, r = _top_k_blocks(jnp.asarray(np.pad(part, ((0, pad), (0, 0)))), self._blocks,
                                 self._valid, k)
            scores.append(np.asarray(s)[:part.shape[0]])
            rows.append(np.asarray(r)[:part.shape[0]])
        rows = np.concatenate(rows) if rows else np.zeros((0, k), np.int32)
        scores = np.concatenate(scores) if scores else np.zeros((0, k), np.float32)
        return scores, self.ids[rows]


def mips_to_l2(vectors: np.ndarray) -> np.ndarray:
    """f32[N, d] → f32[N, d+1]: an extra coordinate sqrt(R² - |v|²), R the largest norm, so
    that for a query [q, 0] the L2-nearest items are exactly the largest inner products
    (|q|² + R² - 2⟨q, v⟩ is the squared distance). HNSW's graph assumes a metric; on inner
    products of vectors with unequal norms it misses neighbours, on this it does not."""
    norms = np.einsum("nd,nd->n", vectors, vectors)
    extra = np.sqrt(np.maximum(norms.max(initial=0.0) - norms, 0.0))
    return np.concatenate([vectors, extra[:, None]], axis=1).astype(np.float32)


class HnswIndex:
    """Approximate maximum inner product search with an HNSW graph (hnswlib), through the
    :func:`mips_to_l2` reduction; the items found are scored exactly.

    ``m`` (graph degree) and ``ef_construction`` trade build time for recall; ``ef_search``
    (raised to k when smaller) trades query time for recall. ``threads=-1`` uses every core.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, *, m: int = 32,
                 ef_construction: int = 200, ef_search: int = 200, threads: int = -1):
        try:
            import hnswlib
        except ImportError as e:
            raise ImportError("HnswIndex needs hnswlib: pip install hnswlib") from e
        self.vectors = np.asarray(vectors, np.float32)
        self.ids, self.ef_search, self.threads = np.asarray(ids), ef_search, threads
        self._index = hnswlib.Index(space="l2", dim=self.vectors.shape[1] + 1)
        self._index.init_index(max_elements=self.vectors.shape[0],
                               ef_construction=ef_construction, M=m)
        self._index.add_items(mips_to_l2(self.vectors), np.arange(self.vectors.shape[0]),
                              num_threads=threads)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries: f32[Q, d] → (scores f32[Q, k], ids[Q, k]), best first."""
        queries = np.asarray(queries, np.float32)
        self._index.set_ef(max(self.ef_search, k))
        padded = np.pad(queries, ((0, 0), (0, 1)))
        rows, _ = self._index.knn_query(padded, k=k, num_threads=self.threads)
        rows = rows.astype(np.int64)
        scores = np.einsum("qd,qkd->qk", queries, self.vectors[rows])
        order = np.argsort(-scores, axis=1, kind="stable")
        return (np.take_along_axis(scores, order, 1),
                self.ids[np.take_along_axis(rows, order, 1)])


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k; found, exact: ids[Q, k]."""
    if found.shape != exact.shape:
        raise ValueError(f"recall_at_k: shapes {found.shape} and {exact.shape} differ")
    hits = [np.intersect1d(f, e).size for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1]) if hits else float("nan")
