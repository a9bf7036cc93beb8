"""``model.attention_dropout``: drops attention weights while training only (SASRec / RecBole)."""

from __future__ import annotations

import jax
import numpy as np
import pytest


@pytest.mark.parametrize("attention", ["softmax", "hstu"])
def test_attention_dropout_acts_in_training_only(tiny, attention):
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    plain_cfg = tiny.config(attention=attention, dropout=0.0, attention_dropout=0.0)
    drop_cfg = tiny.config(attention=attention, dropout=0.0, attention_dropout=0.5)
    plain, variables = tiny.init(plain_cfg, batch, catalog)
    drop, _ = tiny.init(drop_cfg, batch, catalog)

    def vectors(model, train, seed):
        out = model.apply(variables, batch, catalog, train=train,
                          rngs={"dropout": jax.random.key(seed)})
        return np.asarray(out["user_vectors"])

    evaluated = vectors(plain, False, 0)
    # off while evaluating, and a rate of 0 leaves training deterministic
    np.testing.assert_allclose(vectors(drop, False, 0), evaluated, atol=1e-6)
    np.testing.assert_allclose(vectors(plain, True, 1), evaluated, atol=1e-6)
    # on while training: different keys drop different weights
    a, b = vectors(drop, True, 1), vectors(drop, True, 2)
    assert np.abs(a - evaluated).max() > 1e-3
    assert np.abs(a - b).max() > 1e-3


def test_attention_dropout_outside_zero_one_is_refused(tiny):
    with pytest.raises(ValueError, match="model.attention_dropout=1.0"):
        tiny.config(attention_dropout=1.0)
