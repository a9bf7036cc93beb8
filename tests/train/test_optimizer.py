"""``make_optimizer``: the learning-rate schedules and gradient clipping the config selects."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from onepiece_jax.config import ConfigError, base_config, validate
from onepiece_jax.train.step import TrainState, eval_params, make_optimizer


def _train_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = base_config().train
    cfg.update(learning_rate=0.1, warmup_steps=2, **overrides)
    return cfg


def _first_updates(cfg, grads: list[float], total_steps: int = 10) -> np.ndarray:
    """The parameter change on each step for a scalar parameter and the given gradients."""
    optimizer = make_optimizer(cfg, total_steps)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    deltas = []
    for g in grads:
        updates, state = optimizer.update({"w": jnp.asarray(g)}, state, params)
        deltas.append(float(updates["w"]))
    return np.asarray(deltas)


def test_constant_schedule_keeps_the_learning_rate_from_the_first_step():
    # Adam's first steps move a parameter by ~lr whatever the gradient's scale.
    deltas = _first_updates(_train_cfg(schedule="constant"), [1.0] * 6)
    np.testing.assert_allclose(deltas, -0.1, rtol=1e-3)


def test_warmup_cosine_schedule_starts_at_zero_and_decays():
    deltas = -_first_updates(_train_cfg(schedule="warmup_cosine"), [1.0] * 10)
    assert deltas[0] == 0.0 and deltas[2] == pytest.approx(0.1, rel=1e-3)
    assert np.all(np.diff(deltas[2:]) < 0) and deltas[-1] < 0.05


@pytest.mark.parametrize("clip_norm", [0.0, 1e-3])
def test_clip_norm_zero_turns_clipping_off(clip_norm):
    # After one step Adam's first moment is (1 - b1)·g: the raw gradient when clipping is off,
    # the gradient clipped to norm clip_norm otherwise.
    optimizer = make_optimizer(_train_cfg(schedule="constant", clip_norm=clip_norm), 10)
    params = {"w": jnp.zeros(())}
    _, state = optimizer.update({"w": jnp.asarray(5.0)}, optimizer.init(params), params)
    adam = state[1][0]
    expected = 0.1 * (5.0 if clip_norm == 0 else clip_norm)
    assert float(adam.mu["w"]) == pytest.approx(expected, rel=1e-5)


def test_ema_decay_keeps_a_bias_corrected_average_and_leaves_the_updates_alone():
    """The average equals a zero-initialised EMA of the parameters after each update divided by
    1 - decay^t (a NumPy reference), and the parameters move exactly as without it."""
    decay, grads = 0.8, [1.0, -2.0, 0.5, 3.0, -1.0]
    cfg, plain = _train_cfg(ema_decay=decay), _train_cfg()
    np.testing.assert_array_equal(_first_updates(cfg, grads), _first_updates(plain, grads))
    optimizer = make_optimizer(cfg, 10)
    params = {"w": jnp.asarray(0.3)}
    state = optimizer.init(params)
    ema, history = 0.0, []
    for t, g in enumerate(grads, start=1):
        updates, state = optimizer.update({"w": jnp.asarray(g)}, state, params)
        params = {"w": params["w"] + updates["w"]}
        ema = decay * ema + (1 - decay) * float(params["w"])
        history.append(float(params["w"]))
        train_state = TrainState(step=jnp.asarray(t), params=params, opt_state=state,
                                 nonfinite=jnp.asarray(0))
        assert float(eval_params(train_state)["w"]) == pytest.approx(ema / (1 - decay ** t),
                                                                     rel=1e-5)
    assert float(eval_params(train_state)["w"]) != pytest.approx(history[-1], rel=1e-3)
    without = TrainState(step=jnp.asarray(1), params=params,
                         opt_state=make_optimizer(plain, 10).init(params), nonfinite=jnp.asarray(0))
    assert eval_params(without) is params


@pytest.mark.parametrize("key,value", [("schedule", "linear"), ("clip_norm", -1.0),
                                       ("ema_decay", 1.0), ("ema_decay", -0.1)])
def test_bad_schedule_or_clip_norm_is_refused_naming_the_key(key, value):
    config = base_config()
    config.train[key] = value
    with pytest.raises(ConfigError, match=f"config.train.{key}"):
        validate(config)
