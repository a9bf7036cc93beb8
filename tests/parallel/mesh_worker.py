"""One side of the sharded-training equivalence test, run in a clean subprocess.

``python -m tests.parallel.mesh_worker BUILD_DIR OUT_DIR DEVICES MESHES [--pmap]`` with ``MESHES``
like ``1x8,2x4`` trains the tiny planted job for ``STEPS`` steps on each ``(data, model)``
mesh exactly as ``train_and_evaluate`` does (``make_job``, sharded ``init_state``,
``make_train_step``, ``Job.put``), then evaluates it on validation with the sharded item matrix.
``--pmap`` also runs the legacy ``pmap`` step on every device. Writes to ``OUT_DIR``:

* ``<mesh>.npz``: ``param/<path>`` after the last step (tables trimmed to their real rows, the
  padding rows checked to be zero here), ``topk_ids`` / ``topk_scores`` of the first validation
  batch against the whole catalogue;
* ``info.json``: per mesh the loss of every step, the validation metrics, the global and
  per-device shapes of every sharded leaf of the state and of the item matrix, and the shapes of
  the all-gathers in the compiled train step.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.parallel.subproc import force_host_devices

STEPS = 5


def main(build_dir: str, out_dir: str, devices: int, meshes: list[tuple[int, int]],
         with_pmap: bool) -> None:
    force_host_devices(devices)

    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == devices, (jax.device_count(), devices)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {f"{d}x{m}": run_mesh(build_dir, out, (d, m)) for d, m in meshes}
    if with_pmap:
        info["pmap"] = run_pmap(build_dir, out)
    (out / "info.json").write_text(json.dumps(info, indent=1))


def _setup(build_dir: str, out: Path, shape: tuple[int, int]):
    import jax

    from onepiece_jax.data.loader import BatchIterator, device_batch
    from onepiece_jax.train.loop import make_job
    from onepiece_jax.train.step import make_optimizer
    from tests.train.conftest import tiny_config

    cfg = tiny_config(build_dir)
    cfg.mesh.shape = shape
    job = make_job(cfg, out / f"work_{shape[0]}x{shape[1]}")
    train = job.data.load_split("train")
    batch_size = int(cfg.train.batch_size)
    it = BatchIterator(train, batch_size, shuffle=True, seed=int(cfg.seed), drop_remainder=True,
                       rows=job.rows(batch_size))
    batches = [device_batch(next(it)) for _ in range(STEPS)]
    optimizer = make_optimizer(cfg.train, total_steps=100)
    init_rng, step_rng = jax.random.split(jax.random.key(int(cfg.seed)))
    return job, train, batches, optimizer, init_rng, step_rng


def _save_params(params, job, path: Path, **extra) -> None:
    import numpy as np

    from tests.parallel.mp_reference import real_rows

    arrays = {f"param/{k}": v for k, v in real_rows(params, job.model.config).items()}
    np.savez(path, **arrays, **extra)


def _sharded_leaves(tree) -> dict:
    import jax

    from onepiece_jax.parallel.rules import path_str

    return {path_str(p): [list(x.shape), list(x.sharding.shard_shape(x.shape))]
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if not x.sharding.is_fully_replicated}


def run_mesh(build_dir: str, out: Path, shape: tuple[int, int]) -> dict:
    import numpy as np

    from onepiece_jax.eval.retrieval import topk_items
    from onepiece_jax.parallel.distributed import to_host
    from onepiece_jax.train.loop import evaluate_split
    from onepiece_jax.train.step import init_state, make_train_step

    job, train, batches, optimizer, init_rng, step_rng = _setup(build_dir, out, shape)
    example = job.example_batch(train)
    shardings = job.state_shardings(optimizer, example)
    state = init_state(job.model, optimizer, example, job.catalog, init_rng, shardings)
    layout = _sharded_leaves(state)
    step = make_train_step(job.model, job.objective, optimizer, job.mesh, shardings,
                           job.catalog_sharding)
    # One compile, used both to read the program's all-gathers and to run the steps.
    step = step.lower(state, job.put(batches[0]), job.catalog, job.tables, step_rng).compile()
    gathers = sorted(set(re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", step.as_text())))
    losses = []
    for batch in batches:
        state, metrics = step(state, job.put(batch), job.catalog, job.tables, step_rng)
        losses.append(float(metrics["loss"]))

    val = job.data.load_split("validation")
    result = evaluate_split(job, state.params, val, "validation")
    item_vecs = job.item_vectors_fn(state.params, job.catalog)
    head = job.put({k: v[:64][job.rows(64)] for k, v in val.items() if k != "time"})
    users = job.user_vectors_fn(state.params, head, job.catalog)
    scores, ids = topk_items(users, item_vecs, 20, head["exclude"], job.eval_chunk,
                             num_items=int(job.data.spec["num_items"]), shards=job.item_shards,
                             item_sharding=job.item_sharding)
    name = f"{shape[0]}x{shape[1]}"
    _save_params(state.params, job, out / f"{name}.npz", topk_ids=to_host(ids),
                 topk_scores=to_host(scores))
    return {"mesh": dict(job.mesh.shape), "losses": losses, "validation": result["metrics"],
            "state_layout": layout, "item_matrix": [list(item_vecs.shape), list(
                item_vecs.sharding.shard_shape(item_vecs.shape))],
            "train_step_all_gathers": gathers, "vocab_multiple": job.model.config.vocab_multiple,
            "finite": bool(np.isfinite(losses).all())}


def run_pmap(build_dir: str, out: Path) -> dict:
    import jax

    from onepiece_jax.train.step import init_state, make_pmap_train_step, replicate, split_batch

    devices = jax.device_count()
    job, train, batches, optimizer, init_rng, step_rng = _setup(build_dir, out, (devices, 1))
    state = init_state(job.model, optimizer, job.example_batch(train), job.catalog, init_rng)
    catalog = jax.device_get(job.catalog)
    tables = jax.device_get(job.tables)
    state = replicate(state, devices)
    step = make_pmap_train_step(job.model, job.objective, optimizer)
    losses = []
    for batch in batches:
        state, metrics = step(state, split_batch(batch, devices), catalog, tables, step_rng)
        losses.append(float(metrics["loss"][0]))
    params = jax.tree.map(lambda x: x[0], state.params)
    _save_params(params, job, out / "pmap.npz")
    return {"losses": losses}


if __name__ == "__main__":
    meshes = [tuple(int(x) for x in m.split("x")) for m in sys.argv[4].split(",")]
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), meshes, "--pmap" in sys.argv[5:])
