"""A tiny spec, catalog and batch for the model tests (d=16, L=6, P=3, G=2, C=4)."""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.model import ModelConfig, OnePiece
from onepiece_jax.model.config import _features

NUM_ITEMS, NUM_USERS, NUM_QUERIES = 30, 8, 5
B, L, G, P, C, T = 3, 6, 2, 3, 4, 3


def tiny_spec() -> dict:
    return {
        "item": {"item_id": {"vocab_size": NUM_ITEMS + 1, "width": 1},
                 "genre": {"vocab_size": 6, "width": 2},
                 "shop": {"vocab_size": 5, "width": 1}},
        "user": {"user_id": {"vocab_size": NUM_USERS + 1, "width": 1},
                 "age": {"vocab_size": 4, "width": 1}},
        "query": {"query_id": {"vocab_size": NUM_QUERIES + 1, "width": 1}},
        "context": {"hour": {"vocab_size": 25, "width": 1},
                    "hist_len": {"vocab_size": 8, "width": 1}},
        "behaviors": ["click", "cart", "order"],
        "pa_groups": ["order", "click"],
        "tasks": ["click", "cart", "order"],
        "num_items": NUM_ITEMS, "num_users": NUM_USERS, "num_queries": NUM_QUERIES,
    }


def tiny_catalog(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def table(n: int, vocab: int, width: int, ids: bool = False) -> jnp.ndarray:
        values = np.arange(n + 1)[:, None] if ids else rng.integers(0, vocab, (n + 1, width))
        values[0] = 0
        return jnp.asarray(values, jnp.int32)

    return {
        "item": {"item_id": table(NUM_ITEMS, 0, 1, ids=True),
                 "genre": table(NUM_ITEMS, 6, 2), "shop": table(NUM_ITEMS, 5, 1)},
        "user": {"user_id": table(NUM_USERS, 0, 1, ids=True), "age": table(NUM_USERS, 4, 1)},
        "query": {"query_id": table(NUM_QUERIES, 0, 1, ids=True)},
    }


def tiny_batch(mode: str, seed: int = 0) -> dict:
    """Left-padded IH (example 0 full, 1 half, 2 empty), right-padded PA, one padded candidate."""
    rng = np.random.default_rng(seed)
    ih = rng.integers(1, NUM_ITEMS + 1, (B, L))
    ih[1, : L // 2] = 0
    ih[2] = 0
    behavior = np.where(ih > 0, rng.integers(1, 4, (B, L)), 0)
    pa = rng.integers(1, NUM_ITEMS + 1, (B, G, P))
    pa[:, 1, 2:] = 0
    batch = {
        "user": np.array([1, 2, 3]), "query": np.array([2, 0, 0]),
        "context": rng.integers(1, 8, (B, 2)),
        "ih_item": ih, "ih_behavior": behavior, "pa_item": pa,
        "example_mask": np.array([True, True, True]),
    }
    if mode == "ranking":
        cis = rng.integers(1, NUM_ITEMS + 1, (B, C))
        cis[0, -1] = 0
        batch["cis_item"] = cis
        batch["cis_label"] = rng.integers(0, 2, (B, C, T)).astype(np.float32)
    else:
        batch["pool_item"] = rng.integers(1, NUM_ITEMS + 1, (B, 5))
        batch["target"] = ih[:, -1]
    return {k: jnp.asarray(v, jnp.float32 if v.dtype == np.float32 else
                           (bool if v.dtype == bool else jnp.int32)) for k, v in batch.items()}


def tiny_config(mode: str = "retrieval", **overrides) -> ModelConfig:
    spec = tiny_spec()
    base = ModelConfig(
        mode=mode, d_model=16, num_heads=2, feature_dim=4, head_hidden=8, dropout=0.1,
        ih_len=L, pa_groups=G, pa_size=P, num_candidates=C, num_tasks=T,
        item_features=_features(spec, "item"), user_features=_features(spec, "user"),
        query_features=_features(spec, "query"), context_features=_features(spec, "context"),
        num_behaviors=3, pa_behaviors=(3, 1), reasoning_steps=2)
    return dataclasses.replace(base, **overrides)


class JitModel:
    """OnePiece with a jitted ``apply`` (one compile per method/train flag): eager Flax runs op by
    op, which would make this folder several times slower on 2 CPUs."""

    def __init__(self, cfg: ModelConfig):
        self.module = OnePiece(cfg)
        self._apply = jax.jit(self.module.apply, static_argnames=("train", "method"))

    def apply(self, variables, *args, train: bool = False, method: str | None = None, rngs=None):
        if method is not None:
            return self._apply(variables, *args, method=method)
        return self._apply(variables, *args, train=train, rngs=rngs)


@functools.cache
def _model(cfg: ModelConfig) -> JitModel:
    return JitModel(cfg)


def _fast_variables(module: OnePiece, batch: dict, catalog: dict, seed: int) -> dict:
    """Random variables with the exact tree ``module.init`` would give, without compiling init.

    ``init`` compiles every initializer's PRNG code (seconds per config on 2 CPUs); the tests
    need well-scaled random weights, not the production initializers, so the tree comes from
    ``eval_shape`` and the values from numpy: LayerNorm scales near 1, embeddings wide (so that
    features matter), everything else small.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, {"params": jax.random.PRNGKey(seed)}, batch, catalog)

    def fill(path, leaf):
        name = path[-1].key
        std = {"embedding": 0.5, "scale": 0.1}.get(name, 0.15)
        value = rng.normal(0.0, std, leaf.shape) + (1.0 if name == "scale" else 0.0)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def init_model(cfg: ModelConfig, batch: dict, catalog: dict, seed: int = 0, real: bool = False):
    """(JitModel, variables); ``real=True`` runs the production ``module.init``."""
    model = _model(cfg)
    if real:
        return model, jax.jit(model.module.init)({"params": jax.random.PRNGKey(seed)}, batch,
                                                 catalog)
    return model, _fast_variables(model.module, batch, catalog, seed)


@pytest.fixture
def tiny() -> types.SimpleNamespace:
    """The builders, as a fixture so tests never import ``conftest`` by module name."""
    return types.SimpleNamespace(spec=tiny_spec, catalog=tiny_catalog, batch=tiny_batch,
                                 config=tiny_config, init=init_model)
