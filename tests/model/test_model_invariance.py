"""No position leak between candidates, and padded positions never reach valid outputs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

RANKING_VARIANTS = [{}, {"attention": "hstu"}, {"cis_visible": False}]


@pytest.mark.parametrize("overrides", RANKING_VARIANTS)
def test_permuting_candidates_permutes_ranking_outputs_the_same_way(tiny, overrides):
    cfg = tiny.config("ranking", reasoning_steps=2, **overrides)
    batch, catalog = tiny.batch("ranking"), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    perm = np.array([2, 0, 3, 1])
    permuted = {**batch, "cis_item": batch["cis_item"][:, perm],
                "cis_label": batch["cis_label"][:, perm]}
    out = model.apply(variables, batch, catalog, train=False)
    out_p = model.apply(variables, permuted, catalog, train=False)
    np.testing.assert_allclose(out_p["logits"], out["logits"][:, :, perm], atol=1e-5)
    np.testing.assert_allclose(out_p["blocks"], out["blocks"][:, :, perm], atol=1e-5)


def _perturb_padding(batch: dict, catalog: dict) -> tuple[dict, dict]:
    """Different behaviour values on padded IH slots and different features for the padding
    entity (row 0 of every catalog table: what padded IH/PA/CIS tokens look up)."""
    rng = np.random.default_rng(7)
    ih_pad = batch["ih_item"] == 0
    behavior = jnp.where(ih_pad, jnp.asarray(rng.integers(1, 4, ih_pad.shape)),
                         batch["ih_behavior"])
    new_catalog = {entity: {name: table.at[0].set(jnp.asarray(
        rng.integers(1, 3, table.shape[1]), jnp.int32)) for name, table in tables.items()}
        for entity, tables in catalog.items()}
    return {**batch, "ih_behavior": behavior}, new_catalog


@pytest.mark.parametrize("mode,overrides", [
    ("retrieval", {}), ("retrieval", {"attention": "hstu", "base_mask": "causal"}),
    ("ranking", {}), ("ranking", {"cis_visible": False, "prefix_sees_cis": False}),
])
def test_changing_padded_positions_changes_nothing_in_valid_outputs(tiny, mode, overrides):
    cfg = tiny.config(mode, reasoning_steps=2, **overrides)
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    out = model.apply(variables, batch, catalog, train=False)
    out_p = model.apply(variables, *_perturb_padding(batch, catalog), train=False)
    if mode == "retrieval":
        np.testing.assert_allclose(out_p["user_vectors"], out["user_vectors"], atol=1e-5)
    else:
        valid = np.asarray(batch["cis_item"] > 0)
        assert not valid.all(), "the fixture must contain a padded candidate"
        np.testing.assert_allclose(np.asarray(out_p["logits"])[:, valid],
                                   np.asarray(out["logits"])[:, valid], atol=1e-5)
    assert np.isfinite(np.asarray(out_p["blocks"])).all()


def test_padding_perturbation_does_change_a_valid_token_when_unmasked(tiny):
    """Guards the test above: the perturbation reaches the embeddings of padded tokens."""
    cfg = tiny.config("retrieval")
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    batch_p, catalog_p = _perturb_padding(batch, catalog)
    tokens, _ = model.apply(variables, batch, catalog, method="embed")
    tokens_p, _ = model.apply(variables, batch_p, catalog_p, method="embed")
    assert float(jnp.abs(tokens - tokens_p).max()) > 1e-4
