"""Device mesh and batch placement: one place that decides where arrays live.

The mesh has two axes, ``data`` (the batch is split over it) and ``model`` (embedding tables are
split over it on the vocabulary axis, see ``parallel/rules.py``), shaped by ``config.mesh.shape``.
With several processes (multi-host), every process feeds only the rows of each global batch that
its own devices hold (:func:`process_rows`) and :func:`put_batch` assembles the global array with
``jax.make_array_from_process_local_data``; with one process that is the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def mesh_shape(config) -> tuple[int, int]:
    """``config.mesh.shape`` as ``(data, model)``."""
    shape = config.mesh.shape
    if len(shape) != 2 or not all(isinstance(s, int) for s in shape):
        raise ValueError(f"config.mesh.shape={tuple(shape)}: expected (data, model) integers")
    return int(shape[0]), int(shape[1])


def make_mesh(data: int = -1, model: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(data, model)`` mesh; ``-1`` on one axis takes every device the other leaves.

    Devices are laid out data-major, so with ``model`` no larger than a host's device count a
    model group stays inside one host (the table all-reduces never cross the network).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    shape = f"config.mesh.shape=({data}, {model})"
    if data == -1 and model == -1 or min(data, model) < -1 or 0 in (data, model):
        raise ValueError(f"{shape}: each axis must be >= 1, at most one of them -1")
    if -1 in (data, model):
        known = model if data == -1 else data
        if n % known:
            axis = "model" if data == -1 else "data"
            raise ValueError(f"{shape}: the {axis} axis ({known}) does not divide the {n} "
                             "available devices")
        data, model = (n // known, model) if data == -1 else (data, n // known)
    if data * model != n:
        raise ValueError(f"{shape}: {data} x {model} = {data * model} does not match the {n} "
                         "available devices")
    return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def mesh_from_config(config, devices: Sequence | None = None) -> Mesh:
    return make_mesh(*mesh_shape(config), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "config.train.batch_size") -> None:
    data = mesh.shape["data"]
    if batch_size % data:
        raise ValueError(f"{key}={batch_size} is not divisible by the {data} devices of the "
                         "mesh's data axis")


def _local_data_indices(mesh: Mesh) -> list[int]:
    """Positions on the ``data`` axis held by this process's devices (sorted)."""
    me = jax.process_index()
    return sorted({int(i) for (i, _), d in np.ndenumerate(mesh.devices) if d.process_index == me})


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows ``[lo, hi)`` of a global batch that this process feeds (all rows with one process).

    Raises if this process's devices hold a non-contiguous set of data positions, which a
    data-major mesh never does.
    """
    check_batch_size(batch_size, mesh)
    local = _local_data_indices(mesh)
    if local != list(range(local[0], local[0] + len(local))):
        raise ValueError(f"process {jax.process_index()} holds data-axis positions {local}, not "
                         "a contiguous range; lay the mesh out data-major")
    rows = batch_size // mesh.shape["data"]
    return slice(local[0] * rows, (local[-1] + 1) * rows)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch → global arrays sharded on the batch axis.

    With one process ``batch`` is the whole batch; with several it is the slice
    :func:`process_rows` names, and the global batch is ``data / local data positions`` times it.
    """
    sharding = batch_sharding(mesh)
    scale = mesh.shape["data"] // len(_local_data_indices(mesh))
    return {k: jax.make_array_from_process_local_data(
        sharding, v, (v.shape[0] * scale, *v.shape[1:])) for k, v in batch.items()}


def put_global(tree: Any, shardings: Any) -> Any:
    """Host arrays, identical on every process (catalog, negative tables) → global arrays with the
    given shardings; each process copies only the shards its own devices hold."""
    return jax.tree.map(lambda a, s: jax.make_array_from_callback(a.shape, s, lambda i: a[i]),
                        tree, shardings)
