"""Scale-out: vocabulary-sharded tables at 10⁵, 10⁶ and 10⁷ items on 8 simulated CPU devices.

Per item vocabulary (a synthetic catalogue: item id + one of 1000 categories, 10⁴ users, d=64,
the OnePiece retrieval model with K=2) a fresh subprocess — so that peak RSS is per size — puts
8 simulated CPU devices in a (1, 8) mesh, the tables and catalog split over its ``model`` axis
exactly as ``train_and_evaluate`` does (``parallel/rules.py``), and measures:

* per-device bytes of parameters + AdamW state (the most loaded device) against the unsharded
  total;
* a jitted train step (batch 128, sampled + in-batch negatives), median of 3 after compiling;
* the sharded item matrix of the whole catalogue (``eval.retrieval.catalogue_vectors``), once;
* a full-catalogue top-200 evaluation step (``eval.retrieval.topk_items``, 64 users, top-k per
  shard then merged), median of 3 after compiling;
* the process's peak resident set size.

It prints a table, then as its last line a JSON object with ``state_bytes_ratio_1e7`` (per-device
÷ unsharded state bytes at 10⁷ items; the target is ≤ 1/6) and every figure above.

    .venv/bin/python benchmarks/scale.py                        # 10^5, 10^6, 10^7 (~10 min, ~15 GB)
    .venv/bin/python benchmarks/scale.py --items 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICES, DIM, USERS, CATEGORIES = 8, 64, 10_000, 1000
TRAIN_BATCH, EVAL_BATCH, TOP_K, IH_LEN, POOL = 128, 64, 200, 20, 5


def measure(items: int) -> dict:
    """Everything for one vocabulary; runs inside the worker subprocess."""
    import resource
    import statistics
    import time

    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from onepiece_jax.config import base_config
    from onepiece_jax.eval.retrieval import catalogue_layout, catalogue_vectors, topk_items
    from onepiece_jax.model.config import FeatureDef, ModelConfig
    from onepiece_jax.model.onepiece import OnePiece
    from onepiece_jax.parallel.mesh import make_mesh, put_batch, put_global, replicated
    from onepiece_jax.parallel.rules import (
        ShardingRules,
        catalog_shardings,
        pad_catalog,
        shard_bytes,
        vocab_multiple,
    )
    from onepiece_jax.train.objective import Objective
    from onepiece_jax.train.step import (
        init_state,
        make_optimizer,
        make_train_step,
        negative_tables,
        state_shardings,
    )

    assert jax.device_count() == DEVICES, jax.device_count()
    mesh = make_mesh(1, DEVICES)
    rules = ShardingRules(table_axes=("model",))
    multiple = vocab_multiple(0, rules.table_shards(mesh))
    model_cfg = ModelConfig(
        mode="retrieval", d_model=DIM, num_layers=2, num_heads=4, feature_dim=16, dropout=0.0,
        reasoning_steps=2, ih_len=IH_LEN, num_tasks=2, num_behaviors=2, vocab_multiple=multiple,
        item_features=(FeatureDef("item_id", items + 1, 1),
                       FeatureDef("category", CATEGORIES + 1, 1)),
        user_features=(FeatureDef("user_id", USERS + 1, 1),))
    model = OnePiece(model_cfg)
    config = base_config()
    config.tasks = ("click", "order")
    objective = Objective.from_config(config)

    rng = np.random.default_rng(0)
    category = rng.integers(1, CATEGORIES + 1, items + 1).astype(np.int32)
    category[0] = 0
    host_catalog = {"item": {"item_id": np.arange(items + 1, dtype=np.int32)[:, None],
                             "category": category[:, None]},
                    "user": {"user_id": np.arange(USERS + 1, dtype=np.int32)[:, None]}}
    padded = pad_catalog(host_catalog, multiple)
    catalog_sharding = catalog_shardings(padded, mesh, rules)
    catalog = put_global(padded, catalog_sharding)
    counts = np.ones(items + 1, np.float32)
    counts[0] = 0
    tables = negative_tables(counts, host_catalog)
    tables = put_global(tables, jax.tree.map(lambda _: replicated(mesh), tables))
    del host_catalog, padded, category

    def batch(size: int, seed: int) -> dict:
        r = np.random.default_rng(seed)
        ids = lambda *shape: r.integers(1, items + 1, shape).astype(np.int32)
        labels = np.zeros((size, POOL, 2), np.float32)
        labels[:, 0] = 1.0
        return {"user": r.integers(1, USERS + 1, size).astype(np.int32),
                "query": np.zeros(size, np.int32), "ih_item": ids(size, IH_LEN),
                "ih_behavior": r.integers(1, 3, (size, IH_LEN)).astype(np.int32),
                "pool_item": ids(size, POOL), "pool_label": labels, "target": ids(size),
                "exclude": ids(size, IH_LEN), "example_mask": np.ones(size, bool)}

    optimizer = make_optimizer(config.train, total_steps=1000)
    example = batch(TRAIN_BATCH, 0)
    shardings = state_shardings(model, optimizer, example, catalog, mesh, rules)
    state = init_state(model, optimizer, example, catalog, jax.random.key(0), shardings)
    per_device, total = shard_bytes((state.params, state.opt_state))

    step = make_train_step(model, objective, optimizer, mesh, shardings, catalog_sharding)
    step_rng = jax.random.key(1)

    def timed(fn, runs: int = 3) -> float:
        fn()  # compile and warm up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    batches = [put_batch(batch(TRAIN_BATCH, s), mesh) for s in range(4)]
    holder = {"state": state, "i": 0}
    del state

    def train_once():
        holder["state"], metrics = step(holder["state"], batches[holder["i"] % 4], catalog,
                                        tables, step_rng)
        holder["i"] += 1
        holder["loss"] = float(metrics["loss"])

    train_s = timed(train_once)
    params = holder["state"].params
    del holder["state"]  # the optimizer state is not needed for evaluation

    shards = rules.table_shards(mesh)
    item_sharding = NamedSharding(mesh, PartitionSpec(rules.table_axes))
    _, chunk = catalogue_layout(items, shards, 4096)
    item_fn = jax.jit(lambda p, c: catalogue_vectors(
        lambda ids: model.apply({"params": p}, ids, c, method="item_vectors"), items, shards,
        chunk, item_sharding), out_shardings=item_sharding)
    compiled = item_fn.lower(params, catalog).compile()
    start = time.perf_counter()
    item_vecs = jax.block_until_ready(compiled(params, catalog))
    item_matrix_s = time.perf_counter() - start

    users = put_batch({"u": np.random.default_rng(2).normal(size=(EVAL_BATCH, DIM)).astype(
        np.float32), "x": batch(EVAL_BATCH, 3)["exclude"]}, mesh)
    eval_s = timed(lambda: jax.block_until_ready(topk_items(
        users["u"], item_vecs, TOP_K, users["x"], chunk, num_items=items, shards=shards,
        item_sharding=item_sharding)))
    item_per_device, _ = shard_bytes(item_vecs)
    return {"items": items, "state_bytes_per_device": per_device, "state_bytes_total": total,
            "state_bytes_ratio": per_device / total, "item_matrix_bytes_per_device":
            item_per_device, "train_step_s": train_s, "item_matrix_s": item_matrix_s,
            "eval_step_s": eval_s, "peak_rss_bytes": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss * 1024, "loss": holder["loss"]}


def run_worker(items: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(items)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {items} items failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="100000,1000000,10000000")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)), flush=True)
        return
    rows = [run_worker(int(n)) for n in args.items.split(",")]
    base = rows[0]
    print(f"{DEVICES} simulated CPU devices, mesh (data=1, model={DEVICES}), d={DIM}; "
          f"train batch {TRAIN_BATCH}, eval batch {EVAL_BATCH}, top-{TOP_K}; "
          f"ratios against {base['items']:,} items")
    head = (f"{'items':>12} {'state GiB/dev':>13} {'unsharded GiB':>13} {'ratio':>7} "
            f"{'peak RSS GiB':>12} {'train s':>8} {'x':>6} {'item matrix s':>13} "
            f"{'eval s':>8} {'x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['items']:>12,} {_gib(r['state_bytes_per_device']):>13} "
              f"{_gib(r['state_bytes_total']):>13} {r['state_bytes_ratio']:>7.4f} "
              f"{_gib(r['peak_rss_bytes']):>12} {r['train_step_s']:>8.3f} "
              f"{r['train_step_s'] / base['train_step_s']:>6.1f} {r['item_matrix_s']:>13.2f} "
              f"{r['eval_step_s']:>8.3f} {r['eval_step_s'] / base['eval_step_s']:>6.1f}")
    summary = {"devices": DEVICES, "mesh": [1, DEVICES], "d": DIM, "top_k": TOP_K,
               "runs": rows,
               "train_step_ratio": {str(r["items"]): r["train_step_s"] / base["train_step_s"]
                                    for r in rows},
               "eval_step_ratio": {str(r["items"]): r["eval_step_s"] / base["eval_step_s"]
                                   for r in rows}}
    for r in rows:
        if r["items"] == 10_000_000:
            summary["state_bytes_ratio_1e7"] = r["state_bytes_ratio"]
            summary["peak_rss_gib_1e7"] = r["peak_rss_bytes"] / 2**30
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
