"""Pre-norm Transformer whose layers accept a per-layer KV cache.

``h = h + Drop(Attn(LN(h))); h = h + Drop(FFN(LN(h)))`` (SPEC §2); ``model.norm='post'`` gives
SASRec's post-norm layer ``h = LN(h + Drop(Attn(h)))``, ``h = LN(h + Drop(FFN(h)))``;
``model.ffn_inner_dropout=False`` removes the dropout on the FFN's hidden layer (RecBole has
none). With ``attention='hstu'`` the layer is an HSTU block: the gated attention output already
mixes channels, so there is no FFN (as in HSTU). There is no final LayerNorm: the raw residual
stream is what reasoning feeds back (SPEC §7); read-outs apply their own LN (post-norm streams
end in one).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from onepiece_jax.model.attention import KVCache, SelfAttention
from onepiece_jax.model.config import ModelConfig
from onepiece_jax.model.dropout import Dropout


class TransformerLayer(nn.Module):
    """One pre- or post-norm layer (softmax MHSA + GELU FFN, or an HSTU block)."""

    config: ModelConfig
    max_distance: int

    @nn.compact
    def __call__(self, h: jnp.ndarray, mask: jnp.ndarray, cache: KVCache | None,
                 q_pos: np.ndarray, k_pos: np.ndarray, train: bool) -> tuple[jnp.ndarray, KVCache]:
        """h: float32[B, Q, d] residual stream (kept float32 even with bfloat16 compute).

        ``norm='post'`` moves each LayerNorm after its residual sum (SASRec's layer); the cache
        then holds keys/values of the raw stream, as the base pass computed them.
        """
        cfg = self.config
        post = cfg.norm == "post"
        drop = Dropout(cfg.dropout, deterministic=not train)
        attn_norm = nn.LayerNorm(dtype=jnp.float32, name="attn_norm")
        mixed, cache = SelfAttention(cfg, self.max_distance, name="attn")(
            h if post else attn_norm(h), mask, cache, q_pos, k_pos, train)
        h = h + drop(mixed).astype(jnp.float32)
        h = attn_norm(h) if post else h
        if cfg.attention == "softmax":
            ffn_norm = nn.LayerNorm(dtype=jnp.float32, name="ffn_norm")
            init = cfg.kernel_init
            y = nn.gelu(nn.Dense(cfg.ffn_mult * cfg.d_model, dtype=cfg.dtype, kernel_init=init,
                                 name="ffn_in")(h if post else ffn_norm(h)))
            y = drop(y) if cfg.ffn_inner_dropout else y
            y = nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=init, name="ffn_out")(y)
            h = h + drop(y).astype(jnp.float32)
            h = ffn_norm(h) if post else h
        return h, cache


class Transformer(nn.Module):
    """``num_layers`` layers; the same weights run the base pass and every reasoning step."""

    config: ModelConfig
    max_distance: int

    def setup(self):
        self.layers = [TransformerLayer(self.config, self.max_distance, name=f"layer_{i}")
                       for i in range(self.config.num_layers)]

    def __call__(self, h: jnp.ndarray, mask: jnp.ndarray, caches: tuple[KVCache, ...] | None,
                 q_pos: np.ndarray, k_pos: np.ndarray,
                 train: bool) -> tuple[jnp.ndarray, tuple[KVCache, ...]]:
        """h: float32[B, Q, d]; mask: bool[B, 1, Q, S]; caches: one per layer (or None for a
        fresh pass). Returns the last layer's stream and the caches extended by these Q tokens."""
        new_caches = []
        for i, layer in enumerate(self.layers):
            h, cache = layer(h, mask, None if caches is None else caches[i], q_pos, k_pos, train)
            new_caches.append(cache)
        return h, tuple(new_caches)
