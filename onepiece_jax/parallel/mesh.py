"""Device mesh and shardings: one place that decides where arrays live.

Training is data-parallel for now: the batch is sharded over the ``data`` axis and parameters,
optimizer state and the catalog are replicated. The ``model`` axis exists (size 1 by default) so
that vocabulary-sharded embedding tables can be added by rule without touching the train step.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """A ``(data, model)`` mesh; ``data=-1`` takes every device not used by ``model``."""
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % model:
            raise ValueError(f"config.mesh.model={model} does not divide the {len(devices)} "
                             "devices")
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(f"config.mesh: data={data} x model={model} = {data * model} does not "
                         f"match the {len(devices)} available devices")
    return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    data = mesh.shape["data"]
    if batch_size % data:
        raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the "
                         f"{data} devices of the mesh's data axis")


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy batch → a global array sharded on the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}
