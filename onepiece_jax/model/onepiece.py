"""The OnePiece model: context tokens → base pass → K block-wise reasoning steps → read-outs.

``OnePiece(config).apply(variables, batch, catalog, train=..., rngs={"dropout": key})`` returns
``blocks: float32[K+1, B, M, d]`` (O_0..O_K) plus ``user_vectors: float32[K+1, B, d]`` (retrieval)
or ``logits: float32[K+1, B, C, T]`` (ranking, every task head on every step — the losses decide
which step supervises which task). See docs/architecture.md for the batch and catalog contract.
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from onepiece_jax.model import masks
from onepiece_jax.model.attention import KVCache
from onepiece_jax.model.config import ModelConfig
from onepiece_jax.model.dropout import Dropout
from onepiece_jax.model.embeddings import Catalog, ContextEmbedder
from onepiece_jax.model.transformer import Transformer

_INIT = nn.initializers.normal(stddev=0.02)


class TaskHeads(nn.Module):
    """One GELU MLP per task, ``head_t(x) = w2_t · GELU(W1_t x + b1_t) + b2_t``, as one einsum.

    x: float32[..., d] → float32[..., T]. Stacking the T heads' weights keeps them independent
    (no shared hidden layer) while running as a single batched matmul.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        t, d, hidden = cfg.num_tasks, cfg.d_model, cfg.head_hidden
        w1 = self.param("w1", nn.initializers.lecun_normal(batch_axis=(0,)), (t, d, hidden))
        b1 = self.param("b1", nn.initializers.zeros, (t, hidden))
        w2 = self.param("w2", nn.initializers.lecun_normal(batch_axis=(0,)), (t, hidden, 1))
        b2 = self.param("b2", nn.initializers.zeros, (t,))
        dt = cfg.dtype
        h = nn.gelu(jnp.einsum("...d,tdh->...th", x.astype(dt), w1.astype(dt),
                               preferred_element_type=jnp.float32) + b1)
        return jnp.einsum("...th,th->...t", h.astype(dt), w2[..., 0].astype(dt),
                          preferred_element_type=jnp.float32) + b2


class OnePiece(nn.Module):
    """Shared-weight Transformer over the context, unrolled for K block-wise reasoning steps.

    Reasoning (SPEC §3): ``O_0`` = last M rows of the base pass; ``X_k = O_{k-1} + RPE[k]`` and
    ``O_k`` = the same layers applied to X_k under the block-causal mask. With
    ``use_kv_cache=True`` the base is encoded once and step k runs only its M tokens against the
    cached K/V of the base and blocks < k; with ``use_kv_cache=False`` step k recomputes one
    masked pass over [base ; X_1..X_k] (identical in inference; kept for testing and the
    latency benchmark; in training each recomputed pass draws its own dropout).

    The steps are a static Python loop, not ``lax.scan``: the cache grows by M keys per step, so
    every step has its own (small) shapes. A scan would need a preallocated N+K·M cache, attend
    over not-yet-written slots at every step and update it with dynamic slices; its only gain is
    compile time, and with K ≤ rpe_size (a handful) the unrolled steps add only small M-row
    graphs. Measured on CPU (d=64, IH 200, B=128): forward compile 0.7 s at K=0 → 1.4 s at K=3,
    forward+backward 3.2 s → 7.1 s — seconds, once per run.
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        layout = cfg.layout()
        self.embedder = ContextEmbedder(cfg)
        self.encoder = Transformer(cfg, max_distance=layout.block_position(cfg.rpe_size))
        if cfg.rpe_size:
            self.rpe = self.param("rpe", _INIT, (cfg.rpe_size, cfg.d_model))
        self.token_dropout = Dropout(cfg.dropout)
        if cfg.norm == "post":
            # Post-norm layers need normalised inputs and leave a normalised stream, so the LN
            # moves from the read-out to the tokens (SASRec: dropout(LN(item + position))).
            self.input_norm = nn.LayerNorm(dtype=jnp.float32)
        else:
            self.readout_norm = nn.LayerNorm(dtype=jnp.float32)
        if cfg.mode == "ranking":
            self.heads = TaskHeads(cfg)

    def _positions(self, steps: int) -> np.ndarray:
        """int32[N + steps·M]: HSTU relative-position indices of [base ; blocks 1..steps]."""
        layout = self.config.layout()
        blocks = [np.full(layout.block_rows, layout.block_position(k), np.int32)
                  for k in range(1, steps + 1)]
        return np.concatenate([layout.positions, *blocks])

    def _base_mask(self, valid: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        return masks.base_mask(valid, cfg.layout().is_cis, cfg.base_mask == "causal",
                               cfg.cis_visible, cfg.prefix_sees_cis)

    def _isolate_rows(self) -> bool:
        return self.config.mode == "ranking" and not self.config.cis_visible

    def full_mask(self, valid: jnp.ndarray, steps: int) -> jnp.ndarray:
        """bool[B, 1, N + S·M, N + S·M]: what each token of [base ; blocks 1..S] may attend to
        (public: the attention maps compare the learned weights with uniform ones over it)."""
        cfg = self.config
        layout = cfg.layout()
        return masks.block_causal_mask(valid, layout.is_cis, layout.block_rows,
                                       layout.block_start, steps, cfg.base_mask == "causal",
                                       cfg.cis_visible, cfg.prefix_sees_cis,
                                       self._isolate_rows())

    def _full_pass(self, tokens: jnp.ndarray, valid: jnp.ndarray, block_inputs: list[jnp.ndarray],
                   train: bool) -> jnp.ndarray:
        """One masked pass over [base ; X_1..X_S] → float32[B, N + S·M, d] (no cache)."""
        steps = len(block_inputs)
        positions = self._positions(steps)
        h, _ = self.encoder(jnp.concatenate([tokens, *block_inputs], axis=1),
                            self.full_mask(valid, steps), None, positions, positions, train)
        return h

    def _cached_step(self, x: jnp.ndarray, valid: jnp.ndarray, caches: tuple[KVCache, ...],
                     step: int, train: bool) -> tuple[jnp.ndarray, tuple[KVCache, ...]]:
        """x: float32[B, M, d], the step's block input, against the cache of base + blocks < k."""
        layout = self.config.layout()
        mask = masks.reasoning_mask(valid, layout.is_cis, layout.block_rows, layout.block_start,
                                    step, self._isolate_rows())
        q_pos = np.full(layout.block_rows, layout.block_position(step), np.int32)
        return self.encoder(x, mask, caches, q_pos, self._positions(step), train)

    def _reason(self, tokens: jnp.ndarray, valid: jnp.ndarray, train: bool) -> jnp.ndarray:
        """tokens: float32[B, N, d], valid: bool[B, N] → blocks float32[K+1, B, M, d]."""
        cfg = self.config
        layout = cfg.layout()
        rows = layout.block_rows
        positions = layout.positions
        h, caches = self.encoder(tokens, self._base_mask(valid), None, positions, positions, train)
        blocks = [h[:, layout.block_start:layout.block_start + rows]]
        inputs: list[jnp.ndarray] = []
        for step in range(1, cfg.reasoning_steps + 1):
            inputs.append(blocks[-1] + self.rpe[step - 1])
            if cfg.use_kv_cache:
                out, caches = self._cached_step(inputs[-1], valid, caches, step, train)
            else:
                out = self._full_pass(tokens, valid, inputs, train)[:, -rows:]
            blocks.append(out)
        return jnp.stack(blocks)

    def __call__(self, batch: Mapping[str, jnp.ndarray], catalog: Catalog,
                 train: bool = False) -> dict[str, jnp.ndarray]:
        cfg = self.config
        layout = cfg.layout()
        tokens, valid = self.embed(batch, catalog)
        tokens = self.token_dropout(tokens, deterministic=not train)
        blocks = self._reason(tokens, valid, train)
        b = tokens.shape[0]
        chex.assert_shape(blocks, (cfg.reasoning_steps + 1, b, layout.block_rows, cfg.d_model))
        chex.assert_type(blocks, jnp.float32)
        normed = blocks if cfg.norm == "post" else self.readout_norm(blocks)
        if cfg.mode == "ranking":
            return {"blocks": blocks, "logits": self.heads(normed)}
        if self.is_initializing():
            self.item_vectors(batch["ih_item"], catalog)
        return {"blocks": blocks, "user_vectors": normed.mean(axis=2)}

    def item_vectors(self, items: jnp.ndarray, catalog: Catalog) -> jnp.ndarray:
        """items: int32[...] → float32[..., d], the retrieval item tower (see ContextEmbedder)."""
        vectors = self.embedder.item_vectors(items, catalog)
        chex.assert_shape(vectors, (*items.shape, self.config.d_model))
        return vectors.astype(jnp.float32)

    def embed(self, batch: Mapping[str, jnp.ndarray],
              catalog: Catalog) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The base sequence before the Transformer: tokens float32[B, N, d], valid bool[B, N]."""
        tokens, valid = self.embedder(batch, catalog)
        return (self.input_norm(tokens) if self.config.norm == "post" else tokens), valid

    def full_pass(self, batch: Mapping[str, jnp.ndarray], catalog: Catalog,
                  block_inputs: jnp.ndarray) -> jnp.ndarray:
        """Inference-mode reference: one masked pass over [base ; X_1..X_S].

        block_inputs: float32[S, B, M, d] → hidden states float32[B, N + S·M, d]. Used to check
        that KV-cached reasoning equals a single pass with the block-causal mask.
        """
        tokens, valid = self.embed(batch, catalog)
        return self._full_pass(tokens, valid, list(block_inputs), train=False)

    def reasoning_inputs(self, blocks: jnp.ndarray) -> jnp.ndarray:
        """blocks: float32[K+1, B, M, d] → the step inputs X_1..X_K = O_{k-1} + RPE[k]."""
        steps = blocks.shape[0] - 1
        return blocks[:-1] + self.rpe[:steps, None, None, :]


def param_summary(params: Mapping) -> str:
    """A table of parameter counts per module (two levels deep) and the total.

    Parameters directly on a module (positions, RPE) count towards that module. Accepts either
    the ``params`` collection or the full variables dict.
    """
    params = params.get("params", params)
    counts: dict[str, int] = {}
    for path, leaf in traverse_util.flatten_dict(dict(params)).items():
        key = "/".join(str(p) for p in (path[:-1] or path)[:2])
        counts[key] = counts.get(key, 0) + int(np.prod(leaf.shape))
    width = max([len(k) for k in counts] + [len("total")])
    lines = [f"{'module':<{width}}  {'params':>12}", "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v:>12,}" for k, v in sorted(counts.items())]
    lines += ["-" * (width + 14), f"{'total':<{width}}  {sum(counts.values()):>12,}"]
    return "\n".join(lines)
