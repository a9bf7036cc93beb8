"""Self-attention with an optional KV cache: softmax MHSA or the HSTU pointwise variant.

One module serves the base pass and the reasoning steps: the base pass computes K/V for all N
tokens and returns them as the cache; a reasoning step projects only its M new tokens and attends
against ``concat(cache, new)``. Both variants cache the same two arrays, so the Transformer layer
does not care which one it runs.

Queries, keys and values are kept heads-major, ``[B, H, S, D_h]``: the two attention matmuls then
batch over (B, H) with no layout change, and the cache grows along a contiguous axis. On 2 CPU
cores a layer's forward + backward is 1.14-1.25× faster than with ``jax.nn.dot_product_attention``
(whose XLA path works in ``[B, S, H, D_h]`` and transposes around each matmul), see
``benchmarks/attention.py``; the library kernel stays available (``model.attention_impl='xla'``
or ``'cudnn'``), at the cost of swapping the axes of its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from onepiece_jax.model.config import ModelConfig
from onepiece_jax.model.dropout import Dropout

# Analysis hook, off unless asked for: with ``model.apply(..., mutable=[CAPTURE])`` every attention
# call sows its weights ``f32[B, H, Q, S]`` (base pass, then one entry per reasoning step), which
# ``experiments/attention.py`` turns into per-segment maps. Training and serving never make the
# collection mutable, so they run exactly the code below without the extra softmax.
CAPTURE = "attention"


class KVCache(NamedTuple):
    """Per-layer keys and values of every token seen so far: key, value: [B, H, S, D_h]."""

    key: jnp.ndarray
    value: jnp.ndarray


def _extend(cache: KVCache | None, key: jnp.ndarray, value: jnp.ndarray) -> KVCache:
    if cache is None:
        return KVCache(key, value)
    return KVCache(jnp.concatenate([cache.key, key], axis=2),
                   jnp.concatenate([cache.value, value], axis=2))


def _heads_major(projected: jnp.ndarray) -> jnp.ndarray:
    """[B, Q, P, H, D_h] (P projections of every token) → [P, B, H, Q, D_h], one transpose."""
    return jnp.transpose(projected, (2, 0, 3, 1, 4))


def softmax_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                      mask: jnp.ndarray, drop=None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Heads-major softmax attention: query [B, H, Q, D_h], key/value [B, H, S, D_h], mask
    bool[B, 1, Q, S] → (out [B, H, Q, D_h], weights float32[B, H, Q, S]).

    Logits and softmax run in float32 whatever the inputs' dtype; a row with no visible key
    gets uniform weights (finite, like ``jax.nn.dot_product_attention``), which only padded
    query rows have. ``drop`` (optional) is applied to the weights before they mix the values.
    """
    scale = np.float32(1.0 / np.sqrt(query.shape[-1]))
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(jnp.where(mask, logits * scale, -1e30), axis=-1)
    mixed = weights if drop is None else drop(weights)
    return jnp.einsum("bhqk,bhkd->bhqd", mixed.astype(value.dtype), value), weights


class SelfAttention(nn.Module):
    """Multi-head self-attention over [cache ; x] with a boolean mask.

    ``attention='softmax'``: :func:`softmax_attention`, or ``jax.nn.dot_product_attention`` with
    ``model.attention_impl`` set ('xla', 'cudnn'); logits and softmax run in float32 either way.
    ``attention='hstu'``: ``U, V, Q, K = split(SiLU(W1 x))``; weights
    ``SiLU(QKᵀ + rab[q_pos − k_pos]) / n`` with n = number of visible keys of the row (so masked
    keys neither add weight nor change the normaliser); output ``W2(LN(A V) ⊙ U)``. The relative
    bias is indexed by the static ``positions`` of the layout, clipped to ``max_distance``.
    """

    config: ModelConfig
    max_distance: int

    def _capturing(self) -> bool:
        # init makes every collection mutable; the hook is for apply(..., mutable=[CAPTURE])
        return self.is_mutable_collection(CAPTURE) and not self.is_initializing()

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, cache: KVCache | None,
                 q_pos: np.ndarray, k_pos: np.ndarray,
                 train: bool = False) -> tuple[jnp.ndarray, KVCache]:
        """x: float32[B, Q, d] (already normed); mask: bool[B, 1, Q, S]; q_pos: int[Q];
        k_pos: int[S] with S = cached + Q. Returns (out: [B, Q, d], cache over S keys).

        ``train`` with ``attention_dropout > 0`` drops attention weights (the library kernel has
        no dropout, so that case always runs :func:`softmax_attention`)."""
        cfg = self.config
        drop_weights = Dropout(cfg.attention_dropout, deterministic=not train)
        dropping = train and cfg.attention_dropout > 0
        b, q_len, _ = x.shape
        chex.assert_shape(mask, (b, 1, q_len, k_pos.shape[0]))
        heads, head_dim, init = cfg.num_heads, cfg.head_dim, cfg.kernel_init
        if cfg.attention == "softmax":
            qkv = nn.DenseGeneral((3, heads, head_dim), dtype=cfg.dtype, kernel_init=init,
                                  name="qkv")(x)
            query, key, value = _heads_major(qkv)
            cache = _extend(cache, key, value)
            if cfg.attention_impl is None or dropping or self._capturing():
                out, weights = softmax_attention(query, cache.key, cache.value, mask,
                                                 drop_weights if dropping else None)
                if self._capturing():
                    self.sow(CAPTURE, "weights", weights)
                out = jnp.swapaxes(out, 1, 2)
            else:  # the library kernel works in [B, S, H, D_h]
                out = jax.nn.dot_product_attention(
                    *(jnp.swapaxes(a, 1, 2) for a in (query, cache.key, cache.value)),
                    mask=mask, implementation=cfg.attention_impl)
            return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), dtype=cfg.dtype, kernel_init=init,
                                   name="out")(out), cache
        uvqk = nn.silu(nn.DenseGeneral((4, heads, head_dim), dtype=cfg.dtype, kernel_init=init,
                                       name="uvqk")(x))
        gate = uvqk[:, :, 0].reshape(b, q_len, -1)
        value, query, key = _heads_major(uvqk[:, :, 1:])
        cache = _extend(cache, key, value)
        table = self.param("rel_bias", nn.initializers.zeros, (2 * self.max_distance + 1, heads))
        rel = np.clip(q_pos[:, None] - k_pos[None, :], -self.max_distance, self.max_distance)
        bias = jnp.transpose(table[rel + self.max_distance], (2, 0, 1))[None]
        logits = jnp.einsum("bhqd,bhkd->bhqk", query, cache.key,
                            preferred_element_type=jnp.float32) + bias
        visible = mask.astype(jnp.float32)
        weights = nn.silu(logits) * visible / jnp.maximum(visible.sum(-1, keepdims=True), 1.0)
        if self._capturing():
            self.sow(CAPTURE, "weights", weights)
        mixed = jnp.einsum("bhqk,bhkd->bqhd", drop_weights(weights).astype(cfg.dtype),
                           cache.value)
        normed = nn.LayerNorm(dtype=jnp.float32, name="norm")(mixed.reshape(b, q_len, -1))
        gated = normed.astype(cfg.dtype) * gate
        return nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=init, name="out")(gated), cache
