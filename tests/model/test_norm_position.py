"""``model.norm``: pre-norm (SPEC §2) or post-norm layers (SASRec / RecBole's encoder)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.model.config import ModelConfig
from onepiece_jax.model.transformer import TransformerLayer


def _layer_norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps)


def _attention(p: dict, x: np.ndarray, heads: int) -> np.ndarray:
    """Unmasked multi-head softmax attention from the layer's own weights, in NumPy."""
    b, n, d = x.shape
    hd = d // heads
    qkv = x @ np.asarray(p["qkv"]["kernel"]).reshape(d, -1) + np.asarray(p["qkv"]["bias"]).ravel()
    q, k, v = np.split(qkv.reshape(b, n, 3, heads, hd), 3, axis=2)
    q, k, v = (t[:, :, 0].transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return mixed @ np.asarray(p["out"]["kernel"]).reshape(d, d) + np.asarray(p["out"]["bias"])


def _ffn(p: dict, x: np.ndarray) -> np.ndarray:
    h = np.asarray(jax.nn.gelu(jnp.asarray(x @ np.asarray(p["ffn_in"]["kernel"])
                                           + np.asarray(p["ffn_in"]["bias"]))))
    return h @ np.asarray(p["ffn_out"]["kernel"]) + np.asarray(p["ffn_out"]["bias"])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_layer_matches_numpy_reference_for_its_norm_position(norm):
    cfg = ModelConfig(d_model=8, num_heads=2, ffn_mult=2, dropout=0.0, norm=norm)
    layer = TransformerLayer(cfg, max_distance=8)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    mask = jnp.ones((2, 1, 5, 5), bool)
    pos = np.arange(5, dtype=np.int32)
    variables = layer.init(jax.random.PRNGKey(1), jnp.asarray(x), mask, None, pos, pos, False)
    out, _ = layer.apply(variables, jnp.asarray(x), mask, None, pos, pos, False)
    p = jax.tree.map(np.asarray, variables["params"])
    if norm == "pre":
        h = x + _attention(p["attn"], _layer_norm(x), 2)
        want = h + _ffn(p, _layer_norm(h))
    else:
        h = _layer_norm(x + _attention(p["attn"], x, 2))
        want = _layer_norm(h + _ffn(p, h))
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5)


def test_post_norm_model_normalises_tokens_and_reads_out_the_raw_stream(tiny):
    cfg = tiny.config(norm="post", dropout=0.0)
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog, real=True)
    params = variables["params"]
    assert "input_norm" in params and "readout_norm" not in params
    tokens, _ = model.apply(variables, batch, catalog, method="embed")
    np.testing.assert_allclose(np.asarray(tokens).mean(-1), 0.0, atol=1e-5)
    out = model.apply(variables, batch, catalog, train=False)
    np.testing.assert_allclose(out["user_vectors"], np.asarray(out["blocks"]).mean(axis=2),
                               atol=1e-6)


def test_ffn_inner_dropout_changes_training_outputs_only():
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    mask = jnp.ones((2, 1, 5, 5), bool)
    pos = np.arange(5, dtype=np.int32)
    outs = {}
    for inner in (True, False):
        cfg = ModelConfig(d_model=8, num_heads=2, ffn_mult=2, dropout=0.5, norm="post",
                          ffn_inner_dropout=inner)
        layer = TransformerLayer(cfg, max_distance=8)
        variables = layer.init(jax.random.PRNGKey(1), jnp.asarray(x), mask, None, pos, pos, False)
        outs[inner] = [np.asarray(layer.apply(variables, jnp.asarray(x), mask, None, pos, pos,
                                              train, rngs={"dropout": jax.random.PRNGKey(3)})[0])
                       for train in (False, True)]
    np.testing.assert_array_equal(outs[True][0], outs[False][0])
    assert np.abs(outs[True][1] - outs[False][1]).max() > 1e-3
