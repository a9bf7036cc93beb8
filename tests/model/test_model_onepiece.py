"""The model end to end: output contract, jit, default size fwd+bwd, bfloat16, baselines, config."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from onepiece_jax.model import ModelConfig, baseline_overrides, from_config, param_summary


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_outputs_follow_the_architecture_contract_under_jit(tiny, mode):
    cfg = tiny.config(mode, reasoning_steps=2)
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog, real=True)
    apply = jax.jit(model.module.apply, static_argnames="train")
    out = apply(variables, batch, catalog, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b, k1, d = batch["user"].shape[0], cfg.reasoning_steps + 1, cfg.d_model
    m = 2 if mode == "retrieval" else cfg.num_candidates
    assert out["blocks"].shape == (k1, b, m, d) and out["blocks"].dtype == jnp.float32
    if mode == "retrieval":
        assert out["user_vectors"].shape == (k1, b, d)
        items = jax.jit(lambda v, i, c: model.apply(v, i, c, method="item_vectors"))(
            variables, batch["pool_item"], catalog)
        assert items.shape == (*batch["pool_item"].shape, d) and items.dtype == jnp.float32
    else:
        assert out["logits"].shape == (k1, b, cfg.num_candidates, cfg.num_tasks)
        assert out["logits"].dtype == jnp.float32
    for value in out.values():
        assert np.isfinite(np.asarray(value)).all()


def test_dropout_is_active_in_training_and_off_in_inference(tiny):
    cfg = tiny.config("ranking")
    batch, catalog = tiny.batch("ranking"), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    a = model.apply(variables, batch, catalog, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b = model.apply(variables, batch, catalog, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert float(jnp.abs(a["logits"] - b["logits"]).max()) > 0
    c = model.apply(variables, batch, catalog, train=False)
    np.testing.assert_array_equal(c["logits"], model.apply(variables, batch, catalog)["logits"])


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_default_width_forward_and_backward_jit_on_cpu(tiny, mode):
    cfg = dataclasses.replace(tiny.config(mode), d_model=64, num_heads=4, feature_dim=16,
                              head_hidden=64)
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    key = "user_vectors" if mode == "retrieval" else "logits"

    @jax.jit
    def loss_and_grad(params, rng):
        def loss(p):
            out = model.apply({"params": p}, batch, catalog, train=True, rngs={"dropout": rng})
            return jnp.mean(out[key] ** 2)
        return jax.value_and_grad(loss)(params)

    value, grads = loss_and_grad(variables["params"], jax.random.PRNGKey(0))
    assert np.isfinite(float(value))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_bfloat16_compute_runs_keeps_float32_params_and_outputs(tiny, mode):
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model32, variables = tiny.init(tiny.config(mode), batch, catalog)
    model16, variables16 = tiny.init(tiny.config(mode, compute_dtype="bfloat16"), batch, catalog)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables16))
    out16 = model16.apply(variables, batch, catalog)
    out32 = model32.apply(variables, batch, catalog)
    for key, value in out16.items():
        assert value.dtype == jnp.float32 and np.isfinite(np.asarray(value)).all()
        np.testing.assert_allclose(value, out32[key], atol=0.1, rtol=0.1)


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
def test_default_attention_matches_the_library_kernel(tiny, mode):
    """The heads-major ``softmax_attention`` (default) and ``jax.nn.dot_product_attention``
    (``attention_impl='xla'``) are the same function: same parameters, same outputs, a fully
    padded example included."""
    batch, catalog = tiny.batch(mode), tiny.catalog()
    batch = {k: v.at[0].set(jnp.zeros((), v.dtype)) for k, v in batch.items()}  # bools too
    ours, variables = tiny.init(tiny.config(mode), batch, catalog)
    library, library_vars = tiny.init(tiny.config(mode, attention_impl="xla"), batch, catalog)
    assert jax.tree.structure(variables) == jax.tree.structure(library_vars)
    out, expected = ours.apply(variables, batch, catalog), library.apply(variables, batch, catalog)
    for key, value in out.items():
        np.testing.assert_allclose(value, expected[key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_fully_padded_example_gives_finite_outputs(tiny):
    cfg = tiny.config("ranking")
    batch, catalog = tiny.batch("ranking"), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    empty = {k: jnp.zeros_like(v) for k, v in batch.items()}
    out = model.apply(variables, empty, catalog)
    assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


@pytest.mark.parametrize("name,mode", [
    ("sasrec", "retrieval"), ("bidirectional", "retrieval"), ("rearec", "retrieval"),
    ("rearec_pa", "ranking"), ("hstu", "retrieval"), ("hstu_pa", "ranking"),
    ("onepiece", "ranking"),
])
def test_every_baseline_is_a_config_of_the_one_model(tiny, name, mode):
    cfg = tiny.config(mode, **baseline_overrides(name, mode))
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(cfg, batch, catalog)
    out = model.apply(variables, batch, catalog)
    m = cfg.layout().block_rows
    assert out["blocks"].shape[:3] == (cfg.reasoning_steps + 1, batch["user"].shape[0], m)
    if name in ("sasrec", "rearec") and mode == "retrieval":
        assert m == 1
    if name == "sasrec":
        assert "proj_shared" not in variables["params"]["embedder"]  # tied input/output rows
        assert set(variables["params"]["embedder"]["tables"]) == {"item_item_id"}
        table = variables["params"]["embedder"]["tables"]["item_item_id"]["embedding"]
        vectors = model.apply(variables, jnp.array([3, 5]), catalog, method="item_vectors")
        np.testing.assert_allclose(vectors, table[jnp.array([3, 5])], atol=1e-6)
        tokens, _ = model.apply(variables, batch, catalog, method="embed")
        newest = batch["ih_item"][:, -1]
        ih_pos = variables["params"]["embedder"]["ih_pos"][-1]
        expected = np.where((newest > 0)[:, None], table[newest], 0.0)  # padding embeds to zero
        np.testing.assert_allclose(tokens[:, cfg.ih_len - 1] - ih_pos, expected, atol=1e-6)


def test_tied_item_tower_uses_proj_shared_and_adds_no_parameters(tiny):
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    _, separate = tiny.init(tiny.config("retrieval"), batch, catalog)
    _, tied = tiny.init(tiny.config("retrieval", item_tower="shared_proj"), batch, catalog)
    assert "item_tower" in separate["params"]["embedder"]
    assert "item_tower" not in tied["params"]["embedder"]


def test_shared_candidate_tokens_are_the_history_token_of_the_same_item(tiny):
    """``candidate_tokens='shared_proj'``: ranking has no ``proj_cand``; a CIS token is what
    ``proj_shared`` makes of the item at behaviour level 0 (here read through the tied tower)."""
    batch, catalog = tiny.batch("ranking"), tiny.catalog()
    _, own = tiny.init(tiny.config("ranking"), batch, catalog)
    cfg = tiny.config("ranking", candidate_tokens="shared_proj", item_tower="shared_proj")
    model, variables = tiny.init(cfg, batch, catalog)
    assert "proj_cand" in own["params"]["embedder"]
    assert "proj_cand" not in variables["params"]["embedder"]
    tokens, _ = model.apply(variables, batch, catalog, method="embed")
    shared = model.apply(variables, batch["cis_item"], catalog, method="item_vectors")
    np.testing.assert_allclose(tokens[:, -cfg.num_candidates:], shared, atol=1e-6)


def test_sum_tokens_are_the_id_row_plus_a_linear_map_of_the_side_features(tiny):
    """``history_tokens='sum'``: no adapter between the id row and the token; the side features
    (and the behaviour level, zero for the tower) enter through one bias-free linear map."""
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    cfg = tiny.config("retrieval", history_tokens="sum", item_tower="shared_proj")
    model, variables = tiny.init(cfg, batch, catalog)
    embedder = variables["params"]["embedder"]
    assert "proj_shared" not in embedder and "item_tower" not in embedder
    items = np.array([1, 4, 7])
    pooled = []
    for f in cfg.active_features("item"):
        if f.name == "item_id":
            continue
        values = np.asarray(catalog["item"][f.name])[items]
        rows = np.asarray(embedder["tables"][f"item_{f.name}"]["embedding"])[values]
        weight = (values > 0)[..., None]
        pooled.append((rows * weight).sum(1) / np.maximum(weight.sum(1), 1))
    pooled.append(np.zeros((len(items), cfg.feature_dim)))  # behaviour level 0
    id_rows = np.asarray(embedder["tables"]["item_item_id"]["embedding"])[items]
    expected = id_rows + np.concatenate(pooled, -1) @ np.asarray(embedder["proj_side"]["kernel"])
    vectors = model.apply(variables, jnp.asarray(items), catalog, method="item_vectors")
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert float(np.abs(expected - id_rows).max()) > 1e-3  # the side features do contribute


def _user_vectors_for(model, variables, batch, catalog, users) -> np.ndarray:
    return np.asarray(model.apply(variables, {**batch, "user": jnp.asarray(users, jnp.int32)},
                                  catalog, train=False)["user_vectors"])


@pytest.mark.parametrize("user_id", [True, False])
def test_user_id_switch_decides_whether_two_users_with_equal_features_differ(tiny, user_id):
    """``use_user_id=False`` drops the user-id table: users who share every other feature (here
    the age bucket) then get the same SD token, while a different age still changes it."""
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    age = np.asarray(catalog["user"]["age"][:, 0])
    twin_a, twin_b = next((a, b) for a in range(1, len(age)) for b in range(a + 1, len(age))
                          if age[a] == age[b])
    other = next(u for u in range(1, len(age)) if age[u] != age[twin_a])
    model, variables = tiny.init(tiny.config("retrieval", use_user_id=user_id), batch, catalog)
    assert ("user_user_id" in variables["params"]["embedder"]["tables"]) == user_id
    base = _user_vectors_for(model, variables, batch, catalog, [twin_a] * 3)
    twin = _user_vectors_for(model, variables, batch, catalog, [twin_b] * 3)
    assert np.allclose(base, twin, atol=1e-6) == (not user_id)
    other_age = _user_vectors_for(model, variables, batch, catalog, [other] * 3)
    assert not np.allclose(base, other_age, atol=1e-6)


def test_without_user_id_or_other_user_features_the_user_token_is_learned(tiny):
    """A log whose only user feature is the id (Amazon, Taobao) keeps SD with a learned user
    token, the same for every user."""
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    cfg = tiny.config("retrieval", use_user_id=False,
                      user_features=tiny.config("retrieval").user_features[:1])
    assert [f.name for f in cfg.user_features] == ["user_id"] and not cfg.active_features("user")
    model, variables = tiny.init(cfg, batch, catalog)
    assert "sd_default" in variables["params"]["embedder"]
    assert "proj_user" not in variables["params"]["embedder"]
    out = _user_vectors_for(model, variables, batch, catalog, [1, 2, 3])
    np.testing.assert_allclose(out, _user_vectors_for(model, variables, batch, catalog, [4, 5, 6]),
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["retrieval", "ranking"])
@pytest.mark.parametrize("item_id", [True, False])
def test_item_id_switch_decides_whether_outputs_depend_on_the_item_id_column(tiny, mode, item_id):
    """``use_item_id=False`` drops the item-id table everywhere (IH, PA, CIS, item tower): a
    catalogue whose id column is permuted then gives the same outputs, while with the table it
    does not."""
    batch, catalog = tiny.batch(mode), tiny.catalog()
    model, variables = tiny.init(tiny.config(mode, use_item_id=item_id), batch, catalog)
    assert ("item_item_id" in variables["params"]["embedder"]["tables"]) == item_id
    ids = np.asarray(catalog["item"]["item_id"])
    permuted = {**catalog, "item": {**catalog["item"],
                                    "item_id": jnp.asarray(np.concatenate([ids[:1], ids[:0:-1]]))}}
    key = "user_vectors" if mode == "retrieval" else "logits"
    base, other = (np.asarray(model.apply(variables, batch, c)[key]) for c in (catalog, permuted))
    assert np.allclose(base, other, atol=1e-6) == (not item_id)


@pytest.mark.parametrize("override", [dict(use_side_info=False), dict(item_tower="embedding"),
                                      dict(history_tokens="sum")])
def test_dropping_the_item_id_where_a_component_reads_it_is_refused(tiny, override):
    with pytest.raises(ValueError, match="model.use_item_id=False"):
        tiny.config("retrieval", use_item_id=False, **override)


def test_dropping_the_item_id_of_a_spec_without_side_features_is_refused(tiny):
    only_id = tiny.config("retrieval").item_features[:1]
    assert [f.name for f in only_id] == ["item_id"]
    with pytest.raises(ValueError, match="has none"):
        tiny.config("retrieval", use_item_id=False, item_features=only_id)


def test_param_summary_lists_modules_and_the_total(tiny):
    batch, catalog = tiny.batch("ranking"), tiny.catalog()
    _, variables = tiny.init(tiny.config("ranking"), batch, catalog)
    text = param_summary(variables)
    total = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables))
    assert "encoder/layer_0" in text and "heads" in text
    assert text.splitlines()[-1].split()[-1] == f"{total:,}"


def _experiment_config(**model) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "mode": "ranking", "tasks": ("click", "cart", "order"),
        "context": {"ih_max_len": 6, "pa_group_size": 3, "num_candidates": 4},
        "model": {"d_model": 16, "num_heads": 2, "attention_impl": "", **model},
    })


def test_from_config_reads_model_context_and_spec_keys(tiny):
    cfg = from_config(_experiment_config(reasoning_steps=3), tiny.spec())
    assert (cfg.mode, cfg.d_model, cfg.reasoning_steps) == ("ranking", 16, 3)
    assert (cfg.ih_len, cfg.pa_size, cfg.num_candidates, cfg.num_tasks) == (6, 3, 4, 3)
    assert cfg.pa_groups == 2 and cfg.pa_behaviors == (3, 1) and cfg.num_behaviors == 3
    assert cfg.attention_impl is None
    assert [f.name for f in cfg.item_features] == ["item_id", "genre", "shop"]
    assert hash(cfg) == hash(from_config(_experiment_config(reasoning_steps=3), tiny.spec()))


@pytest.mark.parametrize("overrides,key", [
    ({"reasoning_steps": 5, "rpe_size": 4}, "model.reasoning_steps"),
    ({"readout": "last_token"}, "model.readout"),
    ({"attention": "linear"}, "model.attention"),
    ({"d_model": 15}, "model.d_model"),
    ({"compute_dtype": "float16"}, "model.compute_dtype"),
    ({"norm": "sandwich"}, "model.norm"),
])
def test_invalid_model_config_raises_value_error_naming_the_key(tiny, overrides, key):
    with pytest.raises(ValueError, match=key):
        from_config(_experiment_config(**overrides), tiny.spec())


def test_retrieval_block_readout_without_sd_is_rejected():
    with pytest.raises(ValueError, match="model.use_sd"):
        ModelConfig(mode="retrieval", readout="block", use_sd=False)


def test_unknown_pa_group_behaviour_is_rejected(tiny):
    spec = {**tiny.spec(), "pa_groups": ["purchase"]}
    with pytest.raises(ValueError, match="pa_groups"):
        from_config(_experiment_config(), spec)


def test_cudnn_attention_without_bfloat16_is_rejected_before_compilation():
    with pytest.raises(ValueError, match="model.attention_impl"):
        ModelConfig(attention_impl="cudnn")
    assert ModelConfig(attention_impl="cudnn", compute_dtype="bfloat16").attention_impl == "cudnn"
