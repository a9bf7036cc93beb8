"""``model.embed_init_std``: the normal init of the embedding tables (RecBole: N(0, 0.02))."""

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
