"""``model.embed_init_std`` (the embedding tables; RecBole: N(0, 0.02)) and ``model.dense_init``
(the dense kernels): the initial spread each gives."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from onepiece_jax.model.config import ModelConfig
from onepiece_jax.model.embeddings import padded_embed

VOCAB, WIDTH = 4001, 64


def _table(config: ModelConfig) -> np.ndarray:
    embed = padded_embed(VOCAB, WIDTH, config)
    params = embed.init(jax.random.key(0), np.zeros((1,), np.int32))["params"]
    return np.asarray(params["embedding"])


@pytest.mark.parametrize("std, expected", [(0.0, 1 / np.sqrt(WIDTH)), (0.02, 0.02)])
def test_table_rows_have_the_configured_spread(std, expected):
    table = _table(ModelConfig(embed_init_std=std))
    assert table.shape == (VOCAB, WIDTH)
    assert table.std() == pytest.approx(expected, rel=0.02)
    assert abs(table.mean()) < 0.05 * expected


def test_padded_rows_stay_zero_and_real_rows_do_not_depend_on_the_padding():
    config = ModelConfig(embed_init_std=0.02)
    padded = _table(dataclasses.replace(config, vocab_multiple=8))
    assert padded.shape == (4008, WIDTH)
    np.testing.assert_array_equal(padded[VOCAB:], 0.0)
    np.testing.assert_array_equal(padded[:VOCAB], _table(config))


def test_negative_std_is_refused_by_key():
    with pytest.raises(ValueError, match="model.embed_init_std=-0.1"):
        ModelConfig(embed_init_std=-0.1)


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
@pytest.mark.parametrize("choice", ["normal_0.02", "lecun_normal"])
def test_dense_kernels_follow_dense_init(tiny, mode, choice):
    """Every dense kernel of the adapters, attention and FFN is drawn by ``dense_init``: std 0.02,
    or 1/sqrt(fan_in); the task heads keep lecun_normal either way."""
    batch, catalog = tiny.batch(mode), tiny.catalog()
    _, variables = tiny.init(tiny.config(mode, dense_init=choice), batch, catalog, real=True)
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    checked = set()
    for path, leaf in flat:
        names = [getattr(p, "key", "") for p in path]
        if names[-1] != "kernel" or leaf.size < 256:
            continue
        # DenseGeneral's qkv kernel is [d, 3, H, D_h]; every other kernel is [inputs..., out]
        fan_in = leaf.shape[0] if names[-2] == "qkv" else int(np.prod(leaf.shape[:-1]))
        expected = 0.02 if choice == "normal_0.02" else 1 / np.sqrt(fan_in)
        assert np.asarray(leaf).std() == pytest.approx(expected, rel=0.25), names
        checked.add(names[-2] if names[-2] in ("qkv", "out", "ffn_in", "ffn_out") else "adapter")
    assert {"qkv", "out", "ffn_in", "ffn_out", "adapter"} <= checked


def test_unknown_dense_init_is_refused_by_key():
    with pytest.raises(ValueError, match="dense_init"):
        ModelConfig(dense_init="xavier")
