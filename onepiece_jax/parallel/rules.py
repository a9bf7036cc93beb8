"""Sharding rules: which mesh axes every parameter, optimizer slot and catalog table is split over.

A rule is ``(regex, spec)``: the regex is searched in the leaf's ``/``-joined path (e.g.
``params/embedder/tables/item_item_id/embedding`` or, for Adam's first moment of the same table,
``opt_state/1/0/mu/embedder/tables/item_item_id/embedding``) and the first match decides; a leaf no
rule matches is replicated. Because optimizer slots (and the parameters' moving average) carry
their parameter's path, one rule shards a table, its Adam moments and its average alike. In a
spec, :data:`TABLE` stands for the table axes (``('model',)``, or ``('data', 'model')`` with
``config.mesh.shard_tables_over_data``).

By default only the embedding tables are sharded (on the vocabulary axis); dense layers are small
and stay replicated — add a rule such as ``(r"item_tower/.*/kernel$", (None, "model"))`` to split
one. Uneven shards are not allowed by ``jax.device_put``, so tables get their rows padded to a
multiple of the number of table shards: :func:`vocab_multiple` decides it (one place) and the model
(``ModelConfig.table_rows``) and the catalog (:func:`pad_catalog`) apply it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TABLE = "<table>"
Spec = tuple[Any, ...]

DEFAULT_RULES: tuple[tuple[str, Spec], ...] = (
    # every feature table (item/user/query/context features, behaviour levels): rows split
    (r"(^|/)tables/[^/]+/embedding$", (TABLE, None)),
)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Path rules plus the mesh axes that :data:`TABLE` stands for."""

    table_axes: tuple[str, ...] = ("model",)
    rules: tuple[tuple[str, Spec], ...] = DEFAULT_RULES

    @classmethod
    def from_config(cls, config) -> ShardingRules:
        over_data = bool(config.mesh.shard_tables_over_data)
        return cls(table_axes=("data", "model") if over_data else ("model",))

    def table_shards(self, mesh: Mesh) -> int:
        """How many pieces a table's vocabulary axis is cut into on ``mesh``."""
        return int(np.prod([mesh.shape[a] for a in self.table_axes]))

    def spec(self, path: str, ndim: int) -> PartitionSpec:
        for pattern, spec in self.rules:
            if re.search(pattern, path):
                if len(spec) != ndim:
                    raise ValueError(f"sharding rule {pattern!r} gives {len(spec)} axes to {path} "
                                     f"of rank {ndim}")
                return PartitionSpec(*(self.table_axes if a == TABLE else a for a in spec))
        return PartitionSpec()


def path_str(path: Sequence[Any]) -> str:
    """A pytree key path as ``a/b/0/c`` (dict keys, attribute names and indices alike)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[a] for a in names]))


def tree_shardings(tree: Any, mesh: Mesh, rules: ShardingRules) -> Any:
    """A ``NamedSharding`` for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s).

    Raises ``ValueError`` naming the leaf when a sharded dimension does not divide evenly.
    """

    def one(path, leaf) -> NamedSharding:
        name, shape = path_str(path), tuple(np.shape(leaf))
        spec = rules.spec(name, len(shape))
        for dim, axes in zip(shape, spec, strict=False):
            if dim % _axis_size(mesh, axes):
                raise ValueError(
                    f"{name} has {dim} rows, not divisible by the {_axis_size(mesh, axes)} "
                    f"devices of mesh axes {axes}; set config.mesh.vocab_multiple to a multiple "
                    "of it (0 = automatic)")
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def vocab_multiple(requested: int, shards: int) -> int:
    """Row padding of embedding tables and catalog tables (``config.mesh.vocab_multiple``).

    0 (automatic) = the number of table shards, so one device pads nothing. A fixed value (say
    1024) makes parameter shapes — and so checkpoints — independent of the mesh; it must be a
    multiple of the shard count.
    """
    if requested < 0:
        raise ValueError(f"config.mesh.vocab_multiple={requested}: must be >= 0 (0 = automatic)")
    if requested == 0:
        return shards
    if requested % shards:
        raise ValueError(f"config.mesh.vocab_multiple={requested} is not a multiple of the "
                         f"{shards} devices the embedding tables are split over")
    return requested


def padded_rows(rows: int, multiple: int) -> int:
    return -(-rows // multiple) * multiple


def pad_catalog(catalog: Mapping[str, Mapping[str, np.ndarray]],
                multiple: int) -> dict[str, dict[str, np.ndarray]]:
    """Catalog tables ``int32[n+1, w]`` padded with zero rows (= "no value") to a multiple of
    ``multiple`` rows, so they shard evenly; ids past ``n`` are never looked up."""

    def pad(a: np.ndarray) -> np.ndarray:
        extra = padded_rows(a.shape[0], multiple) - a.shape[0]
        return np.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1)) if extra else a

    return {entity: {name: pad(np.asarray(a)) for name, a in tables.items()}
            for entity, tables in catalog.items() if tables}


def catalog_shardings(catalog: Any, mesh: Mesh, rules: ShardingRules) -> Any:
    """Catalog tables are split on rows over the table axes, like the embedding tables."""
    return jax.tree.map(
        lambda a: NamedSharding(mesh, PartitionSpec(rules.table_axes, *([None] * (a.ndim - 1)))),
        catalog)


def shard_bytes(tree: Any) -> tuple[int, int]:
    """``(bytes on the most loaded device, bytes of the whole tree)`` for a tree of jax.Arrays
    (or ``ShapeDtypeStruct``s with a sharding); counts shapes, touches no data."""
    per_device: dict[Any, int] = {}
    total = 0
    for leaf in jax.tree.leaves(tree):
        itemsize = np.dtype(leaf.dtype).itemsize
        total += int(np.prod(leaf.shape)) * itemsize
        shard = int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * itemsize
        for device in leaf.sharding.addressable_devices:
            per_device[device] = per_device.get(device, 0) + shard
    return max(per_device.values(), default=0), total
