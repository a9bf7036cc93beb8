"""``model/dropout.py``: byte-resolution inverted dropout (rate, scaling, determinism)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.model.dropout import Dropout, keep_threshold, random_bytes


def _apply(rate: float, x: jax.Array, seed: int, deterministic: bool = False) -> np.ndarray:
    layer = Dropout(rate)
    return np.asarray(layer.apply({}, x, deterministic=deterministic,
                                  rngs={"dropout": jax.random.key(seed)}))


def test_random_bytes_are_uniform_over_all_256_values():
    draws = np.asarray(random_bytes(jax.random.key(0), (1001, 257)))  # n not a multiple of 4
    assert draws.shape == (1001, 257) and draws.dtype == np.uint8
    counts = np.bincount(draws.ravel(), minlength=256)
    expected = draws.size / 256
    # chi-square with 255 degrees of freedom: mean 255, sd ≈ 22.6; 400 is > 6 sd out
    assert ((counts - expected) ** 2 / expected).sum() < 400


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.5])
def test_drops_the_configured_rate_to_byte_resolution_and_keeps_the_mean(rate):
    x = jnp.ones((512, 512))
    out = _apply(rate, x, seed=1)
    kept = keep_threshold(rate) / 256
    assert abs(kept - (1 - rate)) <= 1 / 512
    n = out.size
    sd = np.sqrt(kept * (1 - kept) / n)
    assert abs((out != 0).mean() - kept) < 5 * sd
    np.testing.assert_allclose(out[out != 0], 1 / kept, rtol=1e-6)  # inverted dropout scaling
    assert abs(out.mean() - 1.0) < 5 * sd / kept  # E[out] = x


def test_is_the_identity_when_deterministic_or_rate_zero_and_differs_per_key():
    x = jax.random.normal(jax.random.key(3), (64, 32))
    np.testing.assert_array_equal(_apply(0.3, x, 0, deterministic=True), np.asarray(x))
    np.testing.assert_array_equal(_apply(0.0, x, 0), np.asarray(x))
    a, b = _apply(0.3, x, 1), _apply(0.3, x, 2)
    np.testing.assert_array_equal(a, _apply(0.3, x, 1))  # same key, same mask
    assert ((a == 0) != (b == 0)).any()


def test_keeps_the_input_dtype():
    x = jnp.ones((16, 16), jnp.bfloat16)
    assert _apply(0.5, x, 0).dtype == jnp.bfloat16


def test_a_rate_below_byte_resolution_is_refused(tiny):
    with pytest.raises(ValueError, match=r"model.dropout=0.001: .* below 1/256"):
        tiny.config(dropout=0.001)
