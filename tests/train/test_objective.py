"""config.loss.weights: each OnePiece loss term weighed as configured, a weight-0 term dropped."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.config import ConfigError, apply_overrides, base_config, validate
from onepiece_jax.train.objective import Objective, compute_loss
from tests.train.conftest import tiny_config


def test_weighted_sum_scales_terms_and_leaves_out_weight_zero_even_when_nan():
    objective = dataclasses.replace(Objective.from_config(base_config()),
                                    weights=(("bce", 2.0), ("u2i", 0.0), ("i2u", 1.0)))
    parts = {"bce": jnp.float32(3.0), "u2i": jnp.float32(np.nan), "i2u": jnp.float32(0.5)}
    assert float(objective.weighted(parts)) == 6.5
    grads = jax.grad(lambda x: objective.weighted({"bce": x, "u2i": jnp.log(-x), "i2u": x}))(
        jnp.float32(1.0))
    assert float(grads) == 3.0


def test_a_term_without_a_weight_counts_once():
    objective = dataclasses.replace(Objective.from_config(base_config()), weights=())
    assert float(objective.weighted({"bce": jnp.float32(1.5), "scl": jnp.float32(2.0)})) == 3.5


@pytest.fixture(scope="module")
def retrieval_job(planted_build, tmp_path_factory):
    from onepiece_jax.data.loader import BatchIterator, device_batch
    from onepiece_jax.train.loop import make_job
    from onepiece_jax.train.step import init_state, make_optimizer

    cfg = tiny_config(str(planted_build))
    job = make_job(cfg, tmp_path_factory.mktemp("objective"))
    train = job.data.load_split("train")
    batch = device_batch(next(BatchIterator(train, 16, shuffle=False, seed=0)))
    state = init_state(job.model, make_optimizer(cfg.train, total_steps=10),
                       job.example_batch(train), job.catalog, jax.random.key(0))
    return job, state.params, batch


def _loss(job, params, batch, weights, **changes):
    objective = dataclasses.replace(job.objective, weights=weights, **changes)
    return compute_loss(objective, job.model, params, batch, job.catalog, job.tables,
                        jax.random.key(1), train=False)


def test_compute_loss_is_the_weighted_sum_of_the_logged_terms(retrieval_job):
    job, params, batch = retrieval_job
    plain, metrics = _loss(job, params, batch, ())
    terms = {name: sum(float(v) for k, v in metrics.items() if k.startswith(name + "/"))
             for name in ("bce", "u2i", "i2u")}
    assert all(v > 0 for v in terms.values()), terms
    np.testing.assert_allclose(float(plain), sum(terms.values()), rtol=1e-5)
    weighted, again = _loss(job, params, batch, (("bce", 0.5), ("u2i", 2.0), ("i2u", 0.0)))
    np.testing.assert_allclose(float(weighted), 0.5 * terms["bce"] + 2.0 * terms["u2i"],
                               rtol=1e-5)
    assert float(again["loss"]) == float(weighted)


@pytest.mark.parametrize("override, message", [
    ({"bce": -1.0}, r"config.loss.weights.bce=-1.0: must be finite and >= 0"),
    ({"u2i": float("nan")}, r"config.loss.weights.u2i=nan"),
    ({"bce": 0.0, "u2i": 0.0, "i2u": 0.0}, r"every retrieval term \(bce, u2i, i2u\) has weight 0"),
    ({"bec": 0.5}, r"config.loss.weights.bec: unknown key \(did you mean 'bce'\? known here: "
                   r"bce, i2u, scl, u2i\)"),
])
def test_bad_loss_weights_are_refused_naming_the_key(override, message):
    config = base_config()
    config.loss.weights.update(override)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_compute_loss_keeps_in_batch_negatives_out_of_bce_when_told(retrieval_job):
    job, params, batch = retrieval_job
    assert job.objective.in_batch
    _, every = _loss(job, params, batch, ())
    _, own = _loss(job, params, batch, (), bce_on_shared=False)
    bce = sorted(k for k in every if k.startswith("bce/"))
    assert bce and all(float(own[k]) < float(every[k]) for k in bce)
    assert all(float(own[k]) == float(every[k]) for k in every if k.startswith(("u2i/", "i2u/")))


def test_exclude_history_drops_the_examples_history_items_from_its_negatives(retrieval_job):
    from onepiece_jax.train.objective import retrieval_pool

    job, params, batch = retrieval_job
    base = dataclasses.replace(job.objective, catalogue=True)
    vectors = lambda ids: job.model.apply({"params": params}, ids, job.catalog,  # noqa: E731
                                          method="item_vectors")
    key = jax.random.key(2)
    _, _, _, plain = retrieval_pool(base, batch, job.tables, key, vectors)
    _, _, _, kept = retrieval_pool(dataclasses.replace(base, exclude_history=True), batch,
                                   job.tables, key, vectors)
    pool_width = batch["pool_item"].shape[1]
    sampled = sum(n for _, n in base.negative_counts)
    in_batch = batch["target"].shape[0] if base.in_batch else 0
    catalogue_ids = np.arange(1, job.tables.num_items + 1)
    history = np.asarray(batch["ih_item"])
    dropped = np.asarray(plain & ~kept)
    assert not np.any(np.asarray(kept & ~plain))  # only ever drops
    assert dropped.any()
    for b in range(history.shape[0]):
        seen = set(history[b][history[b] > 0].tolist())
        cat = dropped[b, pool_width + sampled + in_batch:]
        assert set(catalogue_ids[cat].tolist()) == seen - set(np.asarray(batch["pool_item"][b]))
        assert not dropped[b, :pool_width].any()  # positives stay


def test_exclude_history_reaches_the_objective_and_is_refused_for_ranking():
    config = base_config()
    apply_overrides(config, ["--config.loss.negatives.exclude_history=True",
                             "--config.mode=ranking"])
    with pytest.raises(ConfigError, match=r"config.loss.negatives.exclude_history=True applies "
                                          r"to retrieval only, not to mode='ranking'"):
        validate(config)
    config.mode = "retrieval"
    validate(config)
    assert Objective.from_config(config).exclude_history


@pytest.mark.parametrize("overrides, message", [
    (["--config.loss.bce_negatives=some"],
     r"config.loss.bce_negatives='some': expected 'all' or 'sampled'"),
    (["--config.loss.bce_negatives=sampled", "--config.loss.negatives.uniform=0",
      "--config.loss.negatives.popular=0", "--config.loss.negatives.same_category=0"],
     r"config.loss.bce_negatives='sampled' needs sampled negatives"),
    (["--config.loss.bce_negatives=sampled", "--config.mode=ranking"],
     r"config.loss.bce_negatives='sampled' applies to OnePiece's retrieval objective only, not "
     r"to mode='ranking'"),
    (["--config.loss.bce_negatives=sampled", "--config.loss.kind=next_item_softmax"],
     r"config.loss.bce_negatives='sampled' applies .* loss.kind='next_item_softmax'"),
])
def test_bce_negatives_without_a_meaning_is_refused_naming_the_key(overrides, message):
    config = base_config()
    apply_overrides(config, overrides)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_bce_negatives_sampled_turns_off_the_objectives_bce_on_shared_flag():
    config = base_config()
    assert Objective.from_config(config).bce_on_shared
    config.loss.bce_negatives = "sampled"
    validate(config)
    assert not Objective.from_config(config).bce_on_shared


def test_ranking_with_every_ranking_term_at_zero_is_refused_though_retrieval_terms_are_not():
    config = base_config()
    config.mode = "ranking"
    config.loss.weights.update(bce=0.0, scl=0.0)
    with pytest.raises(ConfigError, match=r"every ranking term \(bce, scl\) has weight 0"):
        validate(config)
