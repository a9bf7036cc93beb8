"""One event schema for every dataset.

Readers turn a source's files into an :class:`EventLog`: columnar numpy arrays with dense ids
(0 = padding everywhere), ordered behaviour levels and side-feature tables. Everything after the
reader (context engineering, splits, the TFDS build) works on this schema only, so adding a
dataset means adding a reader, nothing else.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """A bad input: the message names the file, line and field so a person can act on it."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
        self.path, self.line, self.field = path, line, field


@dataclasses.dataclass
class FeatureTable:
    """Categorical features of one entity kind, row i = entity i (row 0 = padding entity).

    values: int32[num_entities + 1, width]; 0 = missing. Multi-valued features (genres,
    attributes, query terms) use width > 1, right-padded with 0, and are mean-pooled by the model.
    """

    values: np.ndarray
    vocab_size: int  # number of distinct values + 1 (for 0)

    def __post_init__(self):
        if self.values.ndim != 2:
            raise ValueError(
                f"feature table must be 2-D [entities+1, width], got {self.values.shape}")
        self.values = self.values.astype(np.int32, copy=False)

    @property
    def width(self) -> int:
        return int(self.values.shape[1])


@dataclasses.dataclass
class Requests:
    """Ranking requests (impressions with funnel labels), ragged by candidate list.

    Request r shows candidates ``cand_item[offsets[r]:offsets[r+1]]`` with labels
    ``cand_label`` = highest funnel level reached (0 = impression only, 1.. = behaviour levels as
    in ``EventLog.behaviors``, 1-based).
    """

    user: np.ndarray  # int32[R]
    time: np.ndarray  # int64[R]
    query: np.ndarray  # int32[R], 0 = none
    offsets: np.ndarray  # int64[R + 1]
    cand_item: np.ndarray  # int32[N_cand]
    cand_label: np.ndarray  # int8[N_cand]

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclasses.dataclass
class EventLog:
    """All interactions of a dataset, one row per event, dense ids.

    ``behavior`` is 1-based into ``behaviors`` (ordered weak → strong: the funnel). An event's
    level is the strongest signal it carries (a MovieLens rating 5 is level 3 "rated5"; the
    weaker levels are implied). ``time`` is seconds since the epoch, or the event's order when the
    source has no timestamps (``has_timestamps`` False).

    The readers return events sorted by (user, time), ties in file order.
    """

    dataset: str
    user: np.ndarray  # int32[N], 1..num_users
    item: np.ndarray  # int32[N], 1..num_items
    time: np.ndarray  # int64[N]
    behavior: np.ndarray  # int8[N], 1..len(behaviors)
    query: np.ndarray  # int32[N], 0 = none
    behaviors: tuple[str, ...]
    has_timestamps: bool
    item_features: dict[str, FeatureTable]
    user_features: dict[str, FeatureTable]
    query_features: dict[str, FeatureTable] = dataclasses.field(default_factory=dict)
    item_ids: np.ndarray | None = None  # raw id of dense item i at [i] (row 0 unused)
    user_ids: np.ndarray | None = None
    query_ids: np.ndarray | None = None
    requests: Requests | None = None
    # documented recoverable cases (name → count), so nothing is dropped silently
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    # events per behaviour name as the source spells it, before levels merge them (Taobao "cart"
    # and "fav" are both level 2; JDsearch "CART" and "FLW" too), so stats can report the source.
    raw_behavior_counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def num_events(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_users(self) -> int:
        return int(self.user_features["user_id"].values.shape[0] - 1)

    @property
    def num_items(self) -> int:
        return int(self.item_features["item_id"].values.shape[0] - 1)

    @property
    def num_queries(self) -> int:
        if "query_id" not in self.query_features:
            return 0
        return int(self.query_features["query_id"].values.shape[0] - 1)

    def validate(self) -> None:
        """Checks the invariants every consumer relies on (raises ValueError naming the field)."""
        n = self.num_events
        for name in ("user", "item", "time", "behavior", "query"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(
                    f"{self.dataset}: column {name!r} has shape {arr.shape}, want ({n},)")
        checks = [("user", self.user, self.num_users), ("item", self.item, self.num_items),
                  ("behavior", self.behavior, len(self.behaviors)),
                  ("query", self.query, self.num_queries)]
        for name, arr, hi in checks:
            lo = 0 if name == "query" else 1
            if n and (arr.min() < lo or arr.max() > hi):
                raise ValueError(f"{self.dataset}: column {name!r} outside [{lo}, {hi}]: "
                                 f"min {arr.min()}, max {arr.max()}")
        sizes = {"item": self.num_items, "user": self.num_users, "query": self.num_queries}
        for entity, ids in self.raw_ids().items():
            if ids.shape != (sizes[entity] + 1,):
                raise ValueError(f"{self.dataset}: {entity}_ids has shape {ids.shape}, want "
                                 f"({sizes[entity] + 1},): the raw id of each dense id, row 0 "
                                 "for padding")

    def raw_ids(self) -> dict[str, np.ndarray]:
        """``{"item": [N+1], "user": ..., "query": ...}``: the source's id of each dense id
        (row 0: padding), for the entities whose reader kept them; serving maps ids with it."""
        return {entity: np.asarray(ids) for entity, ids in (
            ("item", self.item_ids), ("user", self.user_ids), ("query", self.query_ids))
            if ids is not None}


def identity_table(n: int) -> FeatureTable:
    """The id feature as a table (row i holds i), so ids are looked up like any feature."""
    return FeatureTable(np.arange(n + 1, dtype=np.int32)[:, None], vocab_size=n + 1)


def encode_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense 1-based ids for raw ids; returns (dense int32[N], raw id of dense i at [i])."""
    uniq, inv = np.unique(raw, return_inverse=True)
    return (inv + 1).astype(np.int32), np.concatenate([np.zeros(1, uniq.dtype), uniq])
