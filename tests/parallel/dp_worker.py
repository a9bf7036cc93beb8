"""One side of the data-parallel equivalence test, run in a clean subprocess.

``python -m tests.parallel.dp_worker BUILD_DIR OUT_DIR DEVICES`` sets up the tiny planted job on a
``DEVICES``-way data mesh of simulated CPU devices exactly as ``train_and_evaluate`` does
(``make_job``, ``init_state``, ``make_train_step``, ``put_batch``), then writes to ``OUT_DIR``:

* ``numbers.npz``: ``grad/<path>`` (``jax.grad`` of ``compute_loss`` on the first batch, params
  replicated and batch sharded), ``metric/<name>`` (every metric of the first train step) and
  ``param/<path>`` (the parameters after three train steps);
* ``info.json``: the device count, mesh shape, the per-device shard shape of each batch array and
  the loss of each of ``LOSS_STEPS`` train steps.

``XLA_FLAGS`` must carry ``--xla_force_host_platform_device_count`` before jax is imported; the
test sets it in the subprocess environment and this script checks it took effect.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.parallel.subproc import force_host_devices

STEPS = 3  # parameters compared after this many steps
LOSS_STEPS = 5  # loss curve compared over this many


def main(build_dir: str, out_dir: str, devices: int) -> None:
    force_host_devices(devices)

    import jax
    import numpy as np

    jax.config.update("jax_disable_most_optimizations", True)

    from onepiece_jax.data.loader import BatchIterator, device_batch
    from onepiece_jax.parallel.mesh import check_batch_size, make_mesh, put_batch, replicated
    from onepiece_jax.train.loop import make_job
    from onepiece_jax.train.objective import compute_loss
    from onepiece_jax.train.step import init_state, make_optimizer, make_train_step
    from tests.train.conftest import tiny_config

    assert jax.device_count() == devices, (jax.device_count(), devices)
    out = Path(out_dir)
    cfg = tiny_config(build_dir)
    cfg.mesh.shape = (devices, 1)
    # Dropout on, so the dropout key (not only the negative-sampling key) must agree across meshes.
    cfg.model.dropout = 0.1
    job = make_job(cfg, out / "work")
    assert dict(job.mesh.shape) == {"data": devices, "model": 1}, job.mesh.shape

    train = job.data.load_split("train")
    it = BatchIterator(train, int(cfg.train.batch_size), shuffle=True, seed=int(cfg.seed),
                       group_size=job.group_size, drop_remainder=True)
    batches = [device_batch(next(it)) for _ in range(LOSS_STEPS)]
    optimizer = make_optimizer(cfg.train, total_steps=100)
    init_rng, step_rng = jax.random.split(jax.random.key(int(cfg.seed)))
    # Jitted only to save the op-by-op dispatch of an eager init; the values are the same.
    state = jax.jit(lambda b, c, r: init_state(job.model, optimizer, b, c, r),
                    out_shardings=replicated(job.mesh))(job.example_batch(train), job.catalog,
                                                        init_rng)

    first = put_batch(batches[0], job.mesh)
    shards = {k: [list(v.shape), list(v.sharding.shard_shape(v.shape))] for k, v in first.items()}

    # The gradient on its own, under the train step's shardings, with the train step's key.
    rep, data = replicated(job.mesh), first["user"].sharding

    def grad_fn(params, batch, catalog, tables, rng):
        key = jax.random.fold_in(rng, 0)
        return jax.grad(lambda p: compute_loss(job.objective, job.model, p, batch, catalog,
                                               tables, key)[0])(params)

    grads = jax.jit(grad_fn, in_shardings=(rep, data, rep, rep, rep), out_shardings=rep)(
        state.params, first, job.catalog, job.tables, step_rng)

    def flat(prefix, tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {prefix + jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}

    train_step = make_train_step(job.model, job.objective, optimizer, job.mesh)
    first_metrics, losses = None, []
    for i, batch in enumerate(batches):
        state, metrics = train_step(state, first if i == 0 else put_batch(batch, job.mesh),
                                    job.catalog, job.tables, step_rng)
        first_metrics = metrics if first_metrics is None else first_metrics
        losses.append(float(metrics["loss"]))
        if i + 1 == STEPS:
            params = flat("param", state.params)
    assert int(state.step) == LOSS_STEPS

    arrays = {**flat("grad", grads), **params,
              **{f"metric/{k}": np.asarray(v) for k, v in first_metrics.items()}}
    np.savez(out / "numbers.npz", **arrays)
    info = {"devices": jax.device_count(), "mesh": dict(job.mesh.shape), "shards": shards,
            "losses": losses,
            "param_sharding_replicated": all(
                x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params)),
            "rejections": rejections(cfg, out, make_job, make_mesh, check_batch_size)}
    (out / "info.json").write_text(json.dumps(info, indent=1))


def rejections(cfg, out: Path, make_job, make_mesh, check_batch_size) -> dict:
    """The error message (or None when accepted) of each mesh / batch-size setup, on the real
    device count."""

    def message(fn):
        try:
            fn()
        except ValueError as e:
            return str(e)
        return None

    bad = cfg.copy_and_resolve_references()
    bad.train.batch_size = 60
    bad.mesh.shape = (-1, 1)
    return {
        "mesh 3x2": message(lambda: make_mesh(3, 2)),
        "mesh 16x1": message(lambda: make_mesh(16, 1)),
        "mesh -1x3": message(lambda: make_mesh(-1, 3)),
        "mesh 4x2": message(lambda: make_mesh(4, 2)),
        "mesh -1x2": message(lambda: make_mesh(-1, 2)),
        "batch 60 on data=-1x1": message(lambda: check_batch_size(60, make_mesh(-1, 1))),
        "batch 64 on data=-1x1": message(lambda: check_batch_size(64, make_mesh(-1, 1))),
        "batch 60 on data=4x2": message(lambda: check_batch_size(60, make_mesh(4, 2))),
        "make_job batch 60": message(lambda: make_job(bad, out / "work_bad")),
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
