"""Inverted dropout drawing one random byte per element instead of one 32-bit word.

Why not ``flax.linen.Dropout``: it draws a float32 uniform per element (32 random bits, a full
threefry evaluation per 32-bit word), and on CPU that random-bit generation, not the matmuls, was
the largest single cost of a training step: the FFN's hidden dropout alone (f32[256·88, 256])
took about 75-95 ms per layer and call, against 10 ms for the layer's matmul. Here each 32-bit
word is bitcast into four uint8 draws, so a quarter of the words are generated; the same tensor
took 13-29 ms (``benchmarks/dropout.py``: 2.7-4.2x faster than ``nn.Dropout`` on the step's
tensors). On the MovieLens-100K OnePiece training step (K=2, batch 256) it cut 1,117 / 1,143 ms
to 867 / 857 ms (1.30x; the commits before and after, alternating, twice).

The price is resolution: an element is kept when its byte is below ``t = round(256·(1 − rate))``,
so the realised rate is ``1 − t/256``, within 1/512 of the configured one (0.2 → 0.1992,
0.3 → 0.3008, 0.5 exactly), and kept elements are scaled by ``256/t``, so the expectation is
exactly the input. ``ModelConfig`` refuses rates in (0, 1/256): they would realise 0 or 1/256.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LEVELS = 256  # one uint8 draw per element


def keep_threshold(rate: float) -> int:
    """The byte threshold t: an element is kept when its draw (uniform on 0..255) is below t."""
    return int(round(LEVELS * (1.0 - rate)))


def random_bytes(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint8[shape], uniform: ceil(n/4) random uint32 words, each bitcast into four bytes."""
    n = int(np.prod(shape))
    words = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
    return lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n].reshape(shape)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout(rate, deterministic=...)`` (same rng collection, ``'dropout'``)."""

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return inputs
        threshold = keep_threshold(self.rate)
        keep = random_bytes(self.make_rng("dropout"), inputs.shape) < threshold
        return jnp.where(keep, inputs * (LEVELS / threshold), 0)
