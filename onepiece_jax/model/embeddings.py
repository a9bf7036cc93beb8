"""Feature tables, segment adapters and the item tower: ids → the base token sequence.

Every categorical feature is one ``nn.Embed`` table, looked up through the ``catalog`` pytree
(``catalog[entity][name]: int32[num_entities + 1, width]``), mean-pooled over its width (values
> 0) and concatenated per token; a segment's MLP adapter then compresses the concatenation into
one d-dim token (SPEC §1). The tables are shared by IH, PA, CIS and the retrieval item tower; the
adapters are per segment because the segments play different roles.
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import flax.linen as nn
import jax.numpy as jnp

from onepiece_jax.model.config import FeatureDef, ModelConfig

_INIT = nn.initializers.normal(stddev=0.02)
Catalog = Mapping[str, Mapping[str, jnp.ndarray]]


def masked_mean(vectors: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
    """vectors: float[..., W, D], values: int32[..., W] → float[..., D], mean over values > 0.

    Multi-valued features are right-padded with 0; an all-zero row pools to the zero vector.
    """
    weight = (values > 0).astype(vectors.dtype)[..., None]
    return (vectors * weight).sum(-2) / jnp.maximum(weight.sum(-2), 1.0)


class Adapter(nn.Module):
    """Two-layer GELU MLP into d_model: a segment's ``Proj_*`` (SPEC §1) or the item tower."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        init = cfg.kernel_init
        x = nn.gelu(nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=init)(x))
        return nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=init)(x).astype(jnp.float32)


def padded_embed(vocab_size: int, width: int, config: ModelConfig) -> nn.Embed:
    """An ``nn.Embed`` with ``config.table_rows(vocab_size)`` rows (even sharding on the vocabulary
    axis). The rows past ``vocab_size`` are never looked up; they start at zero and the real rows
    are drawn exactly as for an unpadded table, so the values (and training) do not depend on the
    padding, i.e. on the mesh. ``config.embed_init_std`` > 0 draws them from N(0, std²)."""
    rows = config.table_rows(vocab_size)
    std = float(config.embed_init_std)
    base = nn.initializers.normal(stddev=std) if std > 0 else nn.linear.default_embed_init
    if rows == vocab_size:
        return nn.Embed(vocab_size, width, embedding_init=base)

    def init(key, shape, dtype=jnp.float32):
        return jnp.pad(base(key, (vocab_size, shape[1]), dtype),
                       ((0, shape[0] - vocab_size), (0, 0)))

    return nn.Embed(rows, width, embedding_init=init)


class FeatureTables(nn.Module):
    """One embedding table per feature of the spec, plus the behaviour table (levels + 1)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config

        def tables(entity: str, features: tuple[FeatureDef, ...]) -> dict[str, nn.Embed]:
            return {f.name: padded_embed(f.vocab_size, cfg.feature_width(entity, f), cfg)
                    for f in features}

        self.item = tables("item", cfg.active_features("item"))
        self.user = tables("user", cfg.active_features("user"))
        self.query = tables("query", cfg.active_features("query"))
        self.context = tables("context", cfg.active_features("context"))
        if cfg.uses_behavior:
            self.behavior = padded_embed(cfg.num_behaviors + 1, cfg.feature_dim, cfg)

    def entity(self, entity: str, ids: jnp.ndarray, catalog: Catalog,
               skip: tuple[str, ...] = ()) -> jnp.ndarray:
        """ids: int32[...] of one entity kind → float32[..., D_entity], features concatenated
        (those named in ``skip`` left out; none left gives width 0)."""
        cfg = self.config
        features = [f for f in cfg.active_features(entity) if f.name not in skip]
        tables = {"item": self.item, "user": self.user, "query": self.query}[entity]
        pooled = [jnp.zeros(ids.shape + (0,), jnp.float32)]
        for f in features:
            values = jnp.take(catalog[entity][f.name], ids, axis=0)
            pooled.append(masked_mean(tables[f.name](values), values))
        return jnp.concatenate(pooled, axis=-1)

    def context_features(self, values: jnp.ndarray) -> jnp.ndarray:
        """values: int32[B, F_ctx] (features side by side, spec order) → float32[B, D_ctx]."""
        chex.assert_shape(values, (None, sum(f.width for f in self.config.context_features)))
        pooled, start = [], 0
        for f in self.config.context_features:
            cols = values[:, start:start + f.width]
            pooled.append(masked_mean(self.context[f.name](cols), cols))
            start += f.width
        return jnp.concatenate(pooled, axis=-1)

    def behavior_embedding(self, levels: jnp.ndarray) -> jnp.ndarray:
        """levels: int32[...] → float32[..., feature_dim]; level 0 (unknown) embeds to zero, so an
        item without behaviour (tied item tower) is the item features alone."""
        return self.behavior(levels) * (levels > 0)[..., None]


class ContextEmbedder(nn.Module):
    """Builds the base sequence IH ⊕ [BOS PA_g EOS]×G ⊕ SD ⊕ CIS and the item tower.

    Position signals (SPEC §1): IH learnable absolute slots (left-padded; slot L-1 = newest, or
    slot 0 = oldest with ``ih_positions='from_oldest'``); PA
    slots restart in every group (BOS 0, items 1..P, EOS P+1) with learnable BOS/EOS vectors; one
    slot embedding per SD token; none for CIS (position must not leak relevance).
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        d = cfg.d_model
        self.tables = FeatureTables(cfg)
        self.proj_shared = Adapter(cfg) if cfg.history_tokens == "adapter" else None
        side = [f for f in cfg.active_features("item") if f.name != "item_id"]
        self.proj_side = (nn.Dense(cfg.d_model, use_bias=False,
                                   kernel_init=cfg.kernel_init)
                          if cfg.history_tokens == "sum" and (side or cfg.uses_behavior) else None)
        self.ih_pos = self.param("ih_pos", _INIT, (cfg.ih_len, d))
        if cfg.layout().pa:
            self.pa_pos = self.param("pa_pos", _INIT, (cfg.pa_size + 2, d))
            self.bos = self.param("bos", _INIT, (d,))
            self.eos = self.param("eos", _INIT, (d,))
        if cfg.use_sd:
            self.sd_pos = self.param("sd_pos", _INIT, (2, d))
            user, query, context = map(cfg.active_features, ("user", "query", "context"))
            self.proj_user = Adapter(cfg) if user else None
            self.proj_query = Adapter(cfg) if query else None
            self.proj_context = Adapter(cfg) if context else None
            if not (user and (query or context)):
                self.sd_default = self.param("sd_default", _INIT, (2, d))
        if cfg.mode == "ranking" and cfg.candidate_tokens == "adapter":
            self.proj_cand = Adapter(cfg)
        if cfg.item_tower == "mlp":
            self.item_tower = Adapter(cfg)

    def _shared_tokens(self, items: jnp.ndarray, levels: jnp.ndarray,
                       catalog: Catalog) -> jnp.ndarray:
        """IH/PA tokens: items, levels: int32[...] → float32[..., d].

        'adapter': proj_shared over all the item's features (SPEC §1). 'embedding' skips it: the
        token is the item-id row itself, the same vector the 'embedding' item tower scores (SASRec
        ties input and output embeddings). 'sum': the id row plus a linear map of the side
        features, the additive fusion of SASRec variants with side info: the id row reaches the
        token unchanged, while the side features still shape it.
        """
        if self.config.history_tokens == "adapter":
            return self.proj_shared(self._item_features(items, levels, catalog))
        rows = self._id_rows(items, catalog)
        if self.proj_side is None:  # 'embedding', or 'sum' without side features
            return rows
        return rows + self.proj_side(self._item_features(items, levels, catalog, skip=("item_id",)))

    def _item_features(self, items: jnp.ndarray, levels: jnp.ndarray, catalog: Catalog,
                       skip: tuple[str, ...] = ()) -> jnp.ndarray:
        """The item's pooled features (less ``skip``) and its behaviour-level embedding."""
        features = self.tables.entity("item", items, catalog, skip)
        if self.config.uses_behavior:
            features = jnp.concatenate([features, self.tables.behavior_embedding(levels)], -1)
        return features

    def _id_rows(self, items: jnp.ndarray, catalog: Catalog) -> jnp.ndarray:
        """items: int32[...] → float32[..., d], the item-id embedding row (zero for padding)."""
        values = jnp.take(catalog["item"]["item_id"], items, axis=0)
        return masked_mean(self.tables.item["item_id"](values), values)

    def _anchor_tokens(self, pa_item: jnp.ndarray, catalog: Catalog) -> jnp.ndarray:
        """pa_item: int32[B, G, P] → float32[B, G·(P+2), d] with BOS/EOS around every group."""
        cfg = self.config
        b, g, p = pa_item.shape
        levels = jnp.broadcast_to(jnp.asarray(cfg.pa_behaviors, jnp.int32)[None, :, None],
                                  pa_item.shape)
        items = self._shared_tokens(pa_item, levels, catalog) + self.pa_pos[1:p + 1]
        bos = jnp.broadcast_to(self.bos + self.pa_pos[0], (b, g, 1, cfg.d_model))
        eos = jnp.broadcast_to(self.eos + self.pa_pos[p + 1], (b, g, 1, cfg.d_model))
        return jnp.concatenate([bos, items, eos], axis=2).reshape(b, g * (p + 2), cfg.d_model)

    def _situation_tokens(self, batch: Mapping[str, jnp.ndarray],
                          catalog: Catalog) -> jnp.ndarray:
        """SD: [user, query-or-context] → float32[B, 2, d].

        Search examples (query > 0) use the query adapter; recommendation examples use the
        context adapter on ``batch['context']`` — a per-example select, so one batch may mix both
        and the shapes stay static. A side the spec has no tables for is a learned vector.
        """
        cfg = self.config
        b = batch["user"].shape[0]
        default = getattr(self, "sd_default", None)
        user = (self.proj_user(self.tables.entity("user", batch["user"], catalog))
                if self.proj_user is not None else jnp.broadcast_to(default[0], (b, cfg.d_model)))
        if self.proj_context is not None and "context" in batch:
            context = self.proj_context(self.tables.context_features(batch["context"]))
        elif self.proj_context is not None:
            context = jnp.zeros((b, cfg.d_model), jnp.float32)
        else:
            context = jnp.broadcast_to(default[1], (b, cfg.d_model))
        if self.proj_query is not None:
            query = self.proj_query(self.tables.entity("query", batch["query"], catalog))
            context = jnp.where((batch["query"] > 0)[:, None], query, context)
        return jnp.stack([user, context], axis=1) + self.sd_pos

    def _ih_position_rows(self, ih_item: jnp.ndarray) -> jnp.ndarray:
        """float32[L, d] (slot L-1 = newest) or, ``from_oldest``, float32[B, L, d] with row 0 on
        the oldest item of each left-padded history (the padding slots are masked anyway)."""
        if self.config.ih_positions == "from_newest":
            return self.ih_pos
        length = ih_item.shape[1]
        count = jnp.sum(ih_item > 0, axis=1, keepdims=True)
        slots = jnp.maximum(jnp.arange(length)[None, :] - (length - count), 0)
        return jnp.take(self.ih_pos, slots, axis=0)

    def __call__(self, batch: Mapping[str, jnp.ndarray],
                 catalog: Catalog) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Returns tokens: float32[B, N, d] and valid: bool[B, N] (ids > 0; BOS/EOS/SD valid)."""
        cfg = self.config
        layout = cfg.layout()
        ih_item = batch["ih_item"]
        b = ih_item.shape[0]
        chex.assert_shape(ih_item, (b, cfg.ih_len))
        ih_levels = batch.get("ih_behavior", jnp.zeros_like(ih_item))
        tokens = [self._shared_tokens(ih_item, ih_levels, catalog)
                  + self._ih_position_rows(ih_item)]
        valid = [ih_item > 0]
        if layout.pa:
            pa_item = batch["pa_item"]
            chex.assert_shape(pa_item, (b, cfg.pa_groups, cfg.pa_size))
            tokens.append(self._anchor_tokens(pa_item, catalog))
            edge = jnp.ones((b, cfg.pa_groups, 1), bool)
            valid.append(jnp.concatenate([edge, pa_item > 0, edge], axis=2).reshape(b, -1))
        if layout.sd:
            tokens.append(self._situation_tokens(batch, catalog))
            valid.append(jnp.ones((b, 2), bool))
        if layout.cis:
            cis_item = batch["cis_item"]
            chex.assert_shape(cis_item, (b, cfg.num_candidates))
            tokens.append(self._candidate_tokens(cis_item, catalog))
            valid.append(cis_item > 0)
        tokens, valid = jnp.concatenate(tokens, axis=1), jnp.concatenate(valid, axis=1)
        chex.assert_shape(tokens, (b, layout.length, cfg.d_model))
        chex.assert_type(tokens, jnp.float32)
        return tokens, valid

    def _candidate_tokens(self, items: jnp.ndarray, catalog: Catalog) -> jnp.ndarray:
        """CIS tokens: items: int32[B, C] → float32[B, C, d]; no position (SPEC §1)."""
        if self.config.candidate_tokens == "shared_proj":
            return self._shared_tokens(items, jnp.zeros_like(items), catalog)
        return self.proj_cand(self.tables.entity("item", items, catalog))

    def item_vectors(self, items: jnp.ndarray, catalog: Catalog) -> jnp.ndarray:
        """items: int32[...] → float32[..., d], the retrieval item tower z_v.

        'mlp': its own adapter over the item features; 'shared_proj': the history token with
        behaviour level 0 (tied, whichever ``history_tokens`` makes it); 'embedding': the item-id
        table row (SASRec).
        """
        cfg = self.config
        if cfg.item_tower == "embedding":
            return self._id_rows(items, catalog)
        if cfg.item_tower == "shared_proj":
            return self._shared_tokens(items, jnp.zeros_like(items), catalog)
        return self.item_tower(self.tables.entity("item", items, catalog))

