"""The attention-capture hook (``model.attention.CAPTURE``): off by default, exact when on."""

from __future__ import annotations

import numpy as np
import pytest

from onepiece_jax.experiments.attention import assemble
from onepiece_jax.model.attention import CAPTURE


def _captured(model, variables, batch, catalog):
    out, state = model.module.apply(variables, batch, catalog, train=False, mutable=[CAPTURE])
    layers = state[CAPTURE]["encoder"]
    return out, [[np.asarray(w) for w in layers[name]["attn"]["weights"]]
                 for name in sorted(layers)]


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_capture_changes_nothing_and_rows_are_distributions(tiny, mode):
    cfg = tiny.config(mode, reasoning_steps=2)
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    plain = model.module.apply(variables, batch, catalog, train=False)
    out, layers = _captured(model, variables, batch, catalog)
    for key in plain:
        np.testing.assert_allclose(out[key], plain[key], atol=1e-6)
    n, m = cfg.layout().length, cfg.layout().block_rows
    for pieces in layers:
        assert [p.shape[2:] for p in pieces] == [(n, n), (m, n + m), (m, n + 2 * m)]
        for p in pieces:
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
            assert (p >= 0).all()


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_kv_cached_capture_assembles_to_the_one_pass_attention(tiny, mode):
    """Base pass + cached steps, assembled, equal the attention of one block-causal pass over
    [base ; X_1 .. X_K] (the recompute path's last pass)."""
    batch, catalog = tiny.batch(mode), tiny.catalog()
    cfg = tiny.config(mode, reasoning_steps=2)
    model, variables = tiny.init(cfg, batch, catalog)
    _, cached = _captured(model, variables, batch, catalog)
    recompute = tiny.init(tiny.config(mode, reasoning_steps=2, use_kv_cache=False), batch,
                          catalog)[0]
    _, full = _captured(recompute, variables, batch, catalog)
    layout = cfg.layout()
    for pieces, passes in zip(cached, full, strict=True):
        np.testing.assert_allclose(assemble(pieces, layout.length, layout.block_rows),
                                   passes[-1], atol=1e-5)
