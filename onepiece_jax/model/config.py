"""The model's static configuration: one frozen, hashable dataclass.

Flax module fields must be hashable (they key the jit cache and module identity), so everything
the model needs to know statically — sizes, flags, the feature spec, the token layout — lives in
:class:`ModelConfig` as ints, strings and tuples. :func:`from_config` builds it from the
experiment ``ConfigDict`` plus the dataset's ``features.json`` dict; :meth:`ModelConfig.layout`
derives the token layout (segment offsets, block size) every module agrees on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from onepiece_jax.model.dropout import LEVELS as DROPOUT_LEVELS

MODES = ("retrieval", "ranking")
ATTENTIONS = ("softmax", "hstu")
ATTENTION_IMPLS = (None, "xla", "cudnn")
COMPUTE_DTYPES = ("float32", "bfloat16")
BASE_MASKS = ("bidirectional", "causal")
READOUTS = ("block", "last_token", "newest_item")
ITEM_TOWERS = ("mlp", "shared_proj", "embedding")
HISTORY_TOKENS = ("adapter", "embedding", "sum")
CANDIDATE_TOKENS = ("adapter", "shared_proj")
NORMS = ("pre", "post")
IH_POSITIONS = ("from_newest", "from_oldest")
DENSE_INITS = ("normal_0.02", "lecun_normal")
ENTITIES = ("item", "user", "query")


class FeatureDef(NamedTuple):
    """One embedding table: ``values`` in ``1..vocab_size-1`` (0 = missing), ``width`` per row."""

    name: str
    vocab_size: int
    width: int


class Layout(NamedTuple):
    """Where each segment sits in the base sequence (all static Python/numpy values).

    Order: IH ⊕ [BOS PA_g EOS]×G ⊕ SD ⊕ CIS; absent segments have length 0.
    ``is_cis: bool[N]`` marks candidate tokens (the masks treat them specially);
    ``positions: int32[N]`` is the relative-position index the HSTU bias uses — candidates share
    one index so that no order leaks between them; ``block_rows`` is M and ``block_start`` the base
    row that O_0's first row is read from (the last M rows, or the newest history slot).
    """

    ih: int
    pa: int
    sd: int
    cis: int
    block_rows: int
    block_start: int
    is_cis: np.ndarray
    positions: np.ndarray

    @property
    def length(self) -> int:
        return self.ih + self.pa + self.sd + self.cis

    def block_position(self, step: int) -> int:
        """HSTU position index of reasoning block ``step`` (1-based): after every base token."""
        return int(self.positions.max()) + step


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything static about a OnePiece model (field defaults follow SPEC §7).

    Baselines are values of these fields, see :func:`baseline_overrides`. The feature spec is kept
    as tuples of :class:`FeatureDef` so the dataclass stays hashable. A feature named
    ``<entity>_id`` (``item_id``, ``user_id``, ``query_id``) is embedded with ``d_model`` columns,
    every other feature with ``feature_dim``.
    """

    mode: str = "retrieval"
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.1
    attention_dropout: float = 0.0  # on attention weights while training (SASRec/RecBole: 0.5)
    feature_dim: int = 16
    # "pre": h + f(LN(h)) (SPEC §2); "post": LN(h + f(h)) with LN on the input tokens too
    # (SASRec / RecBole's Transformer encoder)
    norm: str = "pre"
    ffn_inner_dropout: bool = True  # dropout on the FFN's hidden layer too (RecBole: none)
    # std of the normal init of the embedding tables; 0 keeps Flax's default, 1/sqrt(width)
    # (0.125 at d=64). RecBole draws every table (and position) from N(0, 0.02).
    embed_init_std: float = 0.0
    # kernels of every dense layer (segment adapters, item tower, attention, FFN; not the task
    # heads, which are always lecun_normal): "normal_0.02" is N(0, 0.02²) (BERT, HSTU, RecBole);
    # "lecun_normal" is variance 1/fan_in (Flax's default), which keeps an adapter's output at
    # its input's scale instead of ~0.02·sqrt(fan_in) times it
    dense_init: str = "normal_0.02"
    # IH position slots: "from_newest" (left-padded, slot L-1 is always the newest item, as in
    # the original SASRec) or "from_oldest" (slot 0 is the oldest item of the window, as in
    # RecBole's right-padded sequences)
    ih_positions: str = "from_newest"
    attention: str = "softmax"
    # softmax attention kernel: None = the model's heads-major einsum attention (fastest on CPU,
    # benchmarks/attention.py); "xla" or "cudnn" = jax.nn.dot_product_attention's
    attention_impl: str | None = None
    compute_dtype: str = "float32"
    base_mask: str = "bidirectional"
    cis_visible: bool = True
    prefix_sees_cis: bool = True
    reasoning_steps: int = 2
    rpe_size: int = 4
    # O_0, the block fed back and read: "block" = the last M rows (retrieval: the 2 SD tokens,
    # SPEC §3), "last_token" = the last row (M = 1), "newest_item" = the newest history slot
    # (M = 1; SASRec's read-out, the newest item's own residual stream, PA/SD still in context)
    readout: str = "block"
    use_side_info: bool = True
    use_pa: bool = True
    use_sd: bool = True
    # the SD user token embeds the user id (SPEC §1); False keeps only the user's other features
    # (a learned vector when there are none), so the model cannot memorise individual users
    use_user_id: bool = True
    # the item-id table (SPEC §1); False describes every item (IH, PA, CIS, the item tower) by
    # its side features alone, so the model cannot memorise individual items and must generalise
    # through category, brand and shop
    use_item_id: bool = True
    item_tower: str = "mlp"
    history_tokens: str = "adapter"
    # ranking's CIS tokens: "adapter" (their own proj_cand, SPEC §1) or "shared_proj" (the history
    # token of the same item at behaviour level 0, so a candidate starts in the same space as
    # the history it is matched against)
    candidate_tokens: str = "adapter"
    head_hidden: int = 64
    use_kv_cache: bool = True
    ih_len: int = 50
    pa_groups: int = 0
    pa_size: int = 10
    num_candidates: int = 12
    num_tasks: int = 2
    item_features: tuple[FeatureDef, ...] = (FeatureDef("item_id", 2, 1),)
    user_features: tuple[FeatureDef, ...] = ()
    query_features: tuple[FeatureDef, ...] = ()
    context_features: tuple[FeatureDef, ...] = ()
    num_behaviors: int = 0
    pa_behaviors: tuple[int, ...] = ()
    # Embedding tables get their rows rounded up to a multiple of this, so they split evenly over
    # the devices that shard them (set by the train job from the mesh, see parallel/rules.py).
    vocab_multiple: int = 1

    def __post_init__(self):
        _check_choice("mode", self.mode, MODES)
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _check_choice("base_mask", self.base_mask, BASE_MASKS)
        _check_choice("readout", self.readout, READOUTS)
        _check_choice("item_tower", self.item_tower, ITEM_TOWERS)
        _check_choice("history_tokens", self.history_tokens, HISTORY_TOKENS)
        _check_choice("candidate_tokens", self.candidate_tokens, CANDIDATE_TOKENS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("ih_positions", self.ih_positions, IH_POSITIONS)
        _check_choice("dense_init", self.dense_init, DENSE_INITS)
        for key in ("d_model", "num_layers", "num_heads", "ffn_mult", "feature_dim",
                    "head_hidden", "ih_len", "num_tasks", "vocab_multiple"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)}: must be >= 1")
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by "
                             f"model.num_heads={self.num_heads}")
        if self.attention_impl == "cudnn" and (self.compute_dtype != "bfloat16"
                                               or self.attention != "softmax"):
            raise ValueError("model.attention_impl='cudnn' runs softmax attention in bfloat16 "
                             "only: set model.compute_dtype='bfloat16' and "
                             "model.attention='softmax'")
        if self.embed_init_std < 0:
            raise ValueError(f"model.embed_init_std={self.embed_init_std}: must be >= 0 "
                             "(0 = Flax's default, 1/sqrt(width))")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)}: must be in [0, 1)")
            if 0.0 < getattr(self, name) < 1.0 / DROPOUT_LEVELS:
                raise ValueError(f"model.{name}={getattr(self, name)}: dropout draws one byte "
                                 "per element (model/dropout.py), so a rate below 1/256 would "
                                 "realise 0 or 1/256; use 0 or at least 1/256")
        if not 0 <= self.reasoning_steps <= self.rpe_size:
            raise ValueError(f"model.reasoning_steps={self.reasoning_steps}: must be in "
                             f"[0, model.rpe_size={self.rpe_size}] (one RPE row per step)")
        if self.mode == "retrieval" and self.readout == "block" and not self.use_sd:
            raise ValueError("model.readout='block' in retrieval reads the 2 SD tokens (M = |SD|); "
                             "it needs model.use_sd=True, or use model.readout='last_token'")
        if self.mode == "ranking":
            if self.readout != "block":
                raise ValueError("model.readout: ranking reads one row per candidate, so it must "
                                 "be 'block' (for ReaRec-style single-token streams set "
                                 "model.cis_visible=False)")
            if self.num_candidates < 1:
                raise ValueError(f"context.num_candidates={self.num_candidates}: must be >= 1")
        if self.use_pa and self.pa_groups:
            if self.pa_size < 1:
                raise ValueError(f"context.pa_group_size={self.pa_size}: must be >= 1")
            if len(self.pa_behaviors) != self.pa_groups:
                raise ValueError(f"pa_behaviors has {len(self.pa_behaviors)} entries for "
                                 f"{self.pa_groups} anchor groups (spec['pa_groups'])")
        names = [f.name for f in self.item_features]
        if "item_id" not in names and (not self.use_side_info or self.item_tower == "embedding"
                                       or self.history_tokens == "sum"):
            raise ValueError("spec['item'] has no 'item_id' feature, which "
                             "model.use_side_info=False, model.item_tower='embedding' and "
                             "model.history_tokens='sum' need")
        side = [f.name for f in self.item_features if f.name != "item_id"]
        if not self.use_item_id and (not side or not self.use_side_info
                                     or self.item_tower == "embedding"
                                     or self.history_tokens != "adapter"):
            raise ValueError("model.use_item_id=False describes items by their side features "
                             f"alone ({side or 'spec[item] has none'}): it needs "
                             "model.use_side_info=True, model.item_tower other than 'embedding' "
                             "and model.history_tokens='adapter'")
        if self.history_tokens == "embedding" and self.use_side_info:
            raise ValueError("model.history_tokens='embedding' feeds the raw item-id row as the "
                             "IH/PA token (SASRec); it needs model.use_side_info=False")

    def table_rows(self, vocab_size: int) -> int:
        """Rows of an embedding table: ``vocab_size`` rounded up to ``vocab_multiple``."""
        return -(-vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def kernel_init(self) -> nn.initializers.Initializer:
        """The initializer of the dense layers' kernels (``dense_init``)."""
        if self.dense_init == "lecun_normal":
            return nn.initializers.lecun_normal()
        return nn.initializers.normal(stddev=0.02)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def dtype(self) -> Any:
        """The activation dtype of dense/attention compute (parameters stay float32)."""
        return jnp.bfloat16 if self.compute_dtype == "bfloat16" else jnp.float32

    def active_features(self, entity: str) -> tuple[FeatureDef, ...]:
        """The tables the model reads for ``entity`` (item, user, query, context): the spec's,
        less the item side info without ``use_side_info``, the item id without ``use_item_id``
        and the user id without ``use_user_id``."""
        features = getattr(self, f"{entity}_features")
        if entity == "item" and not self.use_side_info:
            return tuple(f for f in features if f.name == "item_id")
        if entity == "item" and not self.use_item_id:
            return tuple(f for f in features if f.name != "item_id")
        if entity == "user" and not self.use_user_id:
            return tuple(f for f in features if f.name != "user_id")
        return features

    @property
    def uses_behavior(self) -> bool:
        return self.use_side_info and self.num_behaviors > 0

    def feature_width(self, entity: str, feature: FeatureDef) -> int:
        """Embedding width of a table: ids get ``d_model``, side features ``feature_dim``."""
        return self.d_model if feature.name == f"{entity}_id" else self.feature_dim

    def layout(self) -> Layout:
        ih = self.ih_len
        pa = self.pa_groups * (self.pa_size + 2) if self.use_pa else 0
        sd = 2 if self.use_sd else 0
        cis = self.num_candidates if self.mode == "ranking" else 0
        n = ih + pa + sd + cis
        if self.mode == "ranking":
            rows = cis
        else:
            rows = 2 if self.readout == "block" else 1
        start = ih - 1 if self.readout == "newest_item" else n - rows
        is_cis = np.arange(n) >= ih + pa + sd
        positions = np.minimum(np.arange(n), ih + pa + sd).astype(np.int32)
        return Layout(ih, pa, sd, cis, rows, start, is_cis, positions)


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"model.{key}={value!r}: expected one of {choices}")


def _features(spec: Mapping, entity: str) -> tuple[FeatureDef, ...]:
    tables = spec.get(entity) or {}
    return tuple(FeatureDef(str(name), int(t["vocab_size"]), int(t["width"]))
                 for name, t in tables.items())


def _behavior_level(group: Any, behaviors: list[str]) -> int:
    """A PA group's behaviour as a 1-based level: given by name (the data's convention) or level."""
    if isinstance(group, str):
        if group not in behaviors:
            raise ValueError(f"spec['pa_groups'] names behaviour {group!r}, not in "
                             f"spec['behaviors']={behaviors}")
        return behaviors.index(group) + 1
    return int(group)


def _get(section: Any, key: str, default: Any) -> Any:
    if section is None:
        return default
    value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    return default if value is None else value


def from_config(cfg: Any, spec: Mapping) -> ModelConfig:
    """Builds the :class:`ModelConfig` from an experiment ConfigDict and the feature spec.

    Reads ``cfg.model.<field>`` for every ModelConfig field that is not a shape or the spec,
    ``cfg.mode`` (or ``cfg.model.mode``), ``cfg.context.ih_max_len``, ``cfg.context.pa_group_size``,
    ``cfg.context.num_candidates`` and ``len(cfg.tasks)``; anchor groups, behaviours and tables
    come from ``spec``. Missing keys keep the dataclass default, so partial configs work in tests.
    ``attention_impl=''`` means None (the config system cannot hold None in a string field).
    """
    model = _get(cfg, "model", None)
    context = _get(cfg, "context", None)
    defaults = ModelConfig()
    shape_and_spec = {"mode", "ih_len", "pa_groups", "pa_size", "num_candidates", "num_tasks",
                      "item_features", "user_features", "query_features", "context_features",
                      "num_behaviors", "pa_behaviors"}
    kwargs = {f.name: _get(model, f.name, getattr(defaults, f.name))
              for f in dataclasses.fields(ModelConfig) if f.name not in shape_and_spec}
    kwargs["attention_impl"] = kwargs["attention_impl"] or None
    behaviors = list(spec.get("behaviors", []))
    groups = list(spec.get("pa_groups", []))
    tasks = _get(cfg, "tasks", None) or spec.get("tasks") or ()
    return ModelConfig(
        mode=_get(model, "mode", None) or _get(cfg, "mode", defaults.mode),
        ih_len=int(_get(context, "ih_max_len", defaults.ih_len)),
        pa_groups=len(groups),
        pa_size=int(_get(context, "pa_group_size", defaults.pa_size)),
        num_candidates=int(_get(context, "num_candidates", defaults.num_candidates)),
        num_tasks=max(len(tasks), 1),
        item_features=_features(spec, "item"),
        user_features=_features(spec, "user"),
        query_features=_features(spec, "query"),
        context_features=_features(spec, "context"),
        num_behaviors=len(behaviors),
        pa_behaviors=tuple(_behavior_level(g, behaviors) for g in groups),
        **kwargs,
    )


def baseline_overrides(name: str, mode: str = "retrieval") -> dict[str, Any]:
    """``cfg.model`` overrides that turn OnePiece into a baseline of SPEC §8 (one model, configs).

    ``sasrec``: causal id-only history, last-token readout, item-id table as item tower.
    ``bidirectional``: OnePiece context without reasoning (K=0).
    ``rearec`` / ``rearec_pa``: single-token (M=1) reasoning; in ranking each candidate is its own
    stream (candidates mutually invisible, also inside reasoning blocks).
    ``hstu`` / ``hstu_pa``: HSTU layers, causal, no reasoning; ranking candidates see the prefix
    only (M-FALCON). ``onepiece``: the defaults.
    """
    ranking = mode == "ranking"
    table: dict[str, dict[str, Any]] = {
        "onepiece": {},
        "bidirectional": {"reasoning_steps": 0},
        "sasrec": {"base_mask": "causal", "use_side_info": False, "use_pa": False,
                   "use_sd": False, "reasoning_steps": 0, "readout": "last_token",
                   "item_tower": "embedding", "history_tokens": "embedding"},
        "rearec": {"use_pa": False, "reasoning_steps": 2,
                   **({"cis_visible": False} if ranking else {"readout": "last_token"})},
        "hstu": {"attention": "hstu", "base_mask": "causal", "use_pa": False,
                 "reasoning_steps": 0, **({"cis_visible": False} if ranking else {})},
    }
    table["rearec_pa"] = {**table["rearec"], "use_pa": True}
    table["hstu_pa"] = {**table["hstu"], "use_pa": True}
    if name not in table:
        raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(table)}")
    if name == "sasrec" and ranking:
        raise ValueError("baseline 'sasrec' is a retrieval (next-item) model; mode='ranking' given")
    return dict(table[name])
