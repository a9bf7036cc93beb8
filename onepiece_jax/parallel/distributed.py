"""Multi-host JAX (one controller process per host): start-up, host copies, "process 0 writes".

JAX's own multi-controller runtime does the work: :func:`initialize` calls
``jax.distributed.initialize`` from ``config.distributed`` (or the environment), after which
``jax.devices()`` lists every device of every process and one ``jit`` program spans them all. No
parameter server: parameters live in global arrays sharded by ``parallel/rules.py``.

Sources of the settings, first found wins: ``config.distributed.*``; the environment
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); JAX's cluster
auto-detection (SLURM, Open MPI, Cloud TPU VMs), which needs none of them. ``ONEPIECE_DISTRIBUTED``
(``1``/``0``), when set, overrides ``config.distributed.enabled`` — e.g. to evaluate a workdir
trained on many hosts in a single process.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def settings(dist) -> dict | None:
    """The keyword arguments for ``jax.distributed.initialize``, or None for a single process.

    ``dist`` is ``config.distributed``: ``enabled`` (bool), ``coordinator_address``
    (``host:port``; "" = environment / auto-detect), ``num_processes`` (0 = same),
    ``process_id`` (-1 = same), ``local_device_ids`` ("0,1" or ""), ``initialization_timeout``.
    """
    flag = os.environ.get("ONEPIECE_DISTRIBUTED", "")
    enabled = flag.lower() in ("1", "true", "yes") if flag else bool(dist.get("enabled", False))
    if not enabled:
        return None
    address = str(dist.get("coordinator_address", "")) or os.environ.get(
        "JAX_COORDINATOR_ADDRESS", "")
    count = int(dist.get("num_processes", 0)) or int(os.environ.get("JAX_NUM_PROCESSES", 0))
    pid = int(dist.get("process_id", -1))
    if pid < 0 and "JAX_PROCESS_ID" in os.environ:
        pid = int(os.environ["JAX_PROCESS_ID"])
    check(address, count, pid)
    out: dict = {"initialization_timeout": int(dist.get("initialization_timeout", 300))}
    if address:
        out.update(coordinator_address=address, num_processes=count, process_id=pid)
    ids = str(dist.get("local_device_ids", ""))
    if ids:
        out["local_device_ids"] = [int(i) for i in ids.split(",")]
    return out


def check(address: str, count: int, pid: int) -> None:
    """Validates explicit settings (all three given, or none: auto-detection)."""
    if not address:
        if count or pid >= 0:
            raise ValueError("config.distributed.num_processes/process_id need "
                             "config.distributed.coordinator_address (host:port) too")
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"config.distributed.coordinator_address={address!r}: expected "
                         "host:port")
    if count < 1:
        raise ValueError(f"config.distributed.num_processes={count}: must be >= 1 with an "
                         "explicit coordinator_address")
    if not 0 <= pid < count:
        raise ValueError(f"config.distributed.process_id={pid}: must be in [0, {count})")


def initialize(dist) -> bool:
    """Starts the multi-controller runtime once (before any computation); True when running
    with several processes. A no-op when ``config.distributed.enabled`` is False."""
    kwargs = settings(dist)
    if kwargs is None:
        return jax.process_count() > 1
    collectives = str(dist.get("cpu_collectives", "gloo"))
    if collectives:  # CPU devices need it for cross-process collectives; GPUs/TPUs ignore it
        jax.config.update("jax_cpu_collectives_implementation", collectives)
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**kwargs)
    return jax.process_count() > 1


def is_primary() -> bool:
    """Process 0 writes metrics, logs and summaries; every process takes part in checkpoints."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process got here (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a global array, on every process: a plain copy when this process holds
    all of it, an all-gather across processes otherwise (how per-process evaluation results are
    aggregated exactly)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def broadcast_from_primary(value):
    """Process 0's value of a host pytree on every process (e.g. a decision only it can make)."""
    if jax.process_count() == 1:
        return value
    return multihost_utils.broadcast_one_to_all(value)
