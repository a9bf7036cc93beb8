"""Block-wise reasoning: KV-cached steps equal one block-causal pass; gradients cross every step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _cached_and_full_pass(tiny, cfg):
    """The variables, the KV-cached outputs and the hidden states of one full pass over
    [base ; X_1..X_K]."""
    batch, catalog = tiny.batch(cfg.mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    out = model.apply(variables, batch, catalog, train=False)
    inputs = model.apply(variables, out["blocks"], method="reasoning_inputs")
    return variables, out, model.apply(variables, batch, catalog, inputs, method="full_pass")


def _cached_vs_full_pass(tiny, cfg):
    _, out, hidden = _cached_and_full_pass(tiny, cfg)
    layout = cfg.layout()
    n, m, start = layout.length, layout.block_rows, layout.block_start
    from_full = jnp.stack([hidden[:, start:start + m]]
                          + [hidden[:, n + (k - 1) * m: n + k * m]
                             for k in range(1, cfg.reasoning_steps + 1)])
    return out, from_full


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_kv_cached_reasoning_equals_one_block_causal_pass(tiny, mode, steps):
    cfg = tiny.config(mode, reasoning_steps=steps)
    out, from_full = _cached_vs_full_pass(tiny, cfg)
    diff = float(jnp.max(jnp.abs(out["blocks"] - from_full)))
    assert diff <= 1e-5, f"cached vs full pass differ by {diff}"


@pytest.mark.parametrize("mode,overrides", [
    ("retrieval", {"attention": "hstu", "base_mask": "causal"}),
    ("ranking", {"attention": "hstu"}),
    ("ranking", {"cis_visible": False, "prefix_sees_cis": False}),
    ("retrieval", {"readout": "last_token", "use_sd": False}),
    ("retrieval", {"readout": "newest_item"}),
    ("retrieval", {"norm": "post"}),
    ("ranking", {"norm": "post"}),
])
def test_kv_cache_equivalence_for_hstu_invisible_candidates_and_last_token(tiny, mode,
                                                                           overrides):
    cfg = tiny.config(mode, reasoning_steps=2, **overrides)
    out, from_full = _cached_vs_full_pass(tiny, cfg)
    assert float(jnp.max(jnp.abs(out["blocks"] - from_full))) <= 1e-5


def test_newest_item_readout_feeds_back_the_newest_history_slot_with_context_after_it(tiny):
    cfg = tiny.config("retrieval", reasoning_steps=2, readout="newest_item")
    layout = cfg.layout()
    assert layout.block_rows == 1 and layout.pa > 0 and layout.sd == 2  # PA and SD follow IH
    variables, out, hidden = _cached_and_full_pass(tiny, cfg)
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    has_history = np.asarray(batch["ih_item"])[:, -1] > 0  # example 2's history is empty
    np.testing.assert_allclose(out["blocks"][0, has_history, 0],
                               hidden[has_history, cfg.ih_len - 1], atol=1e-5)
    assert bool(jnp.isfinite(out["user_vectors"]).all())
    last = tiny.init(dataclasses.replace(cfg, readout="last_token"), batch, catalog)[0]
    assert float(jnp.max(jnp.abs(last.apply(variables, batch, catalog)["blocks"][0]
                                 - out["blocks"][0]))) > 1e-3  # not the last (SD) token


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_full_recompute_path_matches_kv_cache_path_in_inference(tiny, mode):
    batch, catalog = tiny.batch(mode), tiny.catalog()
    cfg = tiny.config(mode, reasoning_steps=3)
    model, variables = tiny.init(cfg, batch, catalog)
    cached = model.apply(variables, batch, catalog, train=False)
    recompute = tiny.init(tiny.config(mode, reasoning_steps=3, use_kv_cache=False), batch,
                           catalog)[0].apply(variables, batch, catalog, train=False)
    for key in cached:
        np.testing.assert_allclose(cached[key], recompute[key], atol=1e-5)


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_gradients_reach_embedding_tables_through_every_reasoning_step(tiny, mode):
    cfg = tiny.config(mode, reasoning_steps=3, dropout=0.0)
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    key = "user_vectors" if mode == "retrieval" else "logits"

    def step_losses(params):
        out = model.apply({"params": params}, batch, catalog)
        return jnp.sum(out[key] ** 2, axis=tuple(range(1, out[key].ndim)))

    # Row k of the Jacobian is the gradient of a loss on step k's output alone.
    jacobian = jax.jit(jax.jacrev(step_losses))(variables["params"])
    for step in range(cfg.reasoning_steps + 1):
        grads = jax.tree_util.tree_map(lambda g, s=step: g[s], jacobian)
        assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
        item_table = grads["embedder"]["tables"]["item_item_id"]["embedding"]
        assert float(jnp.abs(item_table).max()) > 0, f"no item-embedding grad from step {step}"
        if step >= 1:
            # The loss on O_step must flow back through step 1's input (RPE row 0).
            assert float(jnp.abs(grads["rpe"][0]).max()) > 0, f"chain broken before step {step}"
            assert float(jnp.abs(grads["rpe"][step:]).max()) == 0
