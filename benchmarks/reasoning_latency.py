"""Latency of K block-wise reasoning steps relative to K=0, with the KV cache and without.

SPEC §3 claims reasoning is cheap when the base is encoded once and each step runs only its M new
tokens against the cache (paper Table 10: +10% at M=12 in ranking). This script measures it for
the jitted inference forward pass on synthetic data of realistic shape (d=64, 2 layers, 4 heads,
PA 3×30, C=12): retrieval (M=2) and ranking (M=C=12), IH length 50 and 200, batch 1 and 128,
K=0..3, median over repeats after a warm-up. Variants are timed round-robin so that load from
other processes affects them alike.

    .venv/bin/python benchmarks/reasoning_latency.py            # full grid (~5-10 min on 2 CPUs)
    .venv/bin/python benchmarks/reasoning_latency.py --quick    # IH 50, batch 1 and 16

The last line is one JSON object with the headline ratios (IH 200, batch 128 in the full run;
the largest configuration measured under --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from _timing import round_robin_ms

from onepiece_jax.model import ModelConfig, OnePiece
from onepiece_jax.model.config import FeatureDef

NUM_ITEMS, NUM_USERS, NUM_QUERIES = 20_000, 5_000, 1_000
PA_GROUPS, PA_SIZE, CANDIDATES, TASKS, MAX_STEPS = 3, 30, 12, 3, 3


def synthetic_config(mode: str, ih_len: int) -> ModelConfig:
    """Default model sizes (d=64) on a spec with an id plus two side features per item."""
    return ModelConfig(
        mode=mode, ih_len=ih_len, pa_groups=PA_GROUPS, pa_size=PA_SIZE,
        num_candidates=CANDIDATES, num_tasks=TASKS, reasoning_steps=MAX_STEPS,
        item_features=(FeatureDef("item_id", NUM_ITEMS + 1, 1), FeatureDef("category", 300, 1),
                       FeatureDef("shop", 2_000, 1)),
        user_features=(FeatureDef("user_id", NUM_USERS + 1, 1), FeatureDef("age", 10, 1)),
        query_features=(FeatureDef("query_id", NUM_QUERIES + 1, 1),),
        context_features=(FeatureDef("hour", 25, 1),),
        num_behaviors=3, pa_behaviors=(3, 2, 1))


def synthetic_catalog(rng: np.random.Generator) -> dict:
    def table(n: int, vocab: int) -> jnp.ndarray:
        values = np.arange(n + 1) if vocab == 0 else rng.integers(1, vocab, n + 1)
        values[0] = 0
        return jnp.asarray(values[:, None], jnp.int32)

    return {"item": {"item_id": table(NUM_ITEMS, 0), "category": table(NUM_ITEMS, 300),
                     "shop": table(NUM_ITEMS, 2_000)},
            "user": {"user_id": table(NUM_USERS, 0), "age": table(NUM_USERS, 10)},
            "query": {"query_id": table(NUM_QUERIES, 0)}}


def synthetic_batch(rng: np.random.Generator, cfg: ModelConfig, batch: int) -> dict:
    """Histories of random length (left-padded), half the examples with a query."""
    ih = rng.integers(1, NUM_ITEMS + 1, (batch, cfg.ih_len))
    lengths = rng.integers(1, cfg.ih_len + 1, batch)
    ih[np.arange(cfg.ih_len)[None, :] < (cfg.ih_len - lengths)[:, None]] = 0
    data = {"user": rng.integers(1, NUM_USERS + 1, batch),
            "query": rng.integers(0, NUM_QUERIES + 1, batch) * (rng.random(batch) < 0.5),
            "context": rng.integers(1, 25, (batch, 1)),
            "ih_item": ih, "ih_behavior": np.where(ih > 0, rng.integers(1, 4, ih.shape), 0),
            "pa_item": rng.integers(1, NUM_ITEMS + 1, (batch, PA_GROUPS, PA_SIZE))}
    if cfg.mode == "ranking":
        data["cis_item"] = rng.integers(1, NUM_ITEMS + 1, (batch, CANDIDATES))
    return {k: jnp.asarray(v, jnp.int32) for k, v in data.items()}


def time_variants(fns: dict, variables: dict, batch: dict, catalog: dict,
                  repeats: int) -> dict[str, float]:
    """Median wall time (ms) per variant; compile + one warm-up run first, then round-robin."""
    return round_robin_ms({name: lambda _, f=fn: f(variables, batch, catalog)
                           for name, fn in fns.items()}, repeats, warmup=2)


def run(ih_lens: list[int], batches: list[int], repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    catalog = synthetic_catalog(rng)
    rows = []
    for mode in ("retrieval", "ranking"):
        for ih_len in ih_lens:
            base = synthetic_config(mode, ih_len)
            probe = synthetic_batch(rng, base, 1)
            # Parameters do not depend on K or the cache flag (the RPE table has rpe_size rows).
            variables = jax.jit(OnePiece(base).init)({"params": jax.random.PRNGKey(0)}, probe,
                                                     catalog)
            fns = {}
            for steps in range(MAX_STEPS + 1):
                for cached in ((True,) if steps == 0 else (True, False)):
                    cfg = dataclasses.replace(base, reasoning_steps=steps, use_kv_cache=cached)
                    fns[(steps, cached)] = jax.jit(OnePiece(cfg).apply)
            for batch_size in batches:
                batch = synthetic_batch(rng, base, batch_size)
                ms = time_variants(fns, variables, batch, catalog, repeats)
                for cached in (True, False):
                    times = [ms[(k, cached if k else True)] for k in range(MAX_STEPS + 1)]
                    rows.append({"mode": mode, "block_rows": base.layout().block_rows,
                                 "ih_len": ih_len, "batch": batch_size,
                                 "path": "kv-cache" if cached else "recompute", "ms": times,
                                 "ratio": [t / times[0] for t in times]})
                    print(format_row(rows[-1]), flush=True)
    return rows


def format_header() -> str:
    steps = "".join(f"{'K=' + str(k):>17}" for k in range(1, MAX_STEPS + 1))
    return f"{'mode':<10}{'M':>3}{'IH':>5}{'B':>5}  {'path':<10}{'K=0 ms':>9}{steps}"


def format_row(row: dict) -> str:
    ratios = "".join(f"{r:>7.2f}x ({t:>6.1f})" for r, t in zip(row["ratio"][1:], row["ms"][1:],
                                                                strict=True))
    return (f"{row['mode']:<10}{row['block_rows']:>3}{row['ih_len']:>5}{row['batch']:>5}  "
            f"{row['path']:<10}{row['ms'][0]:>9.2f}{ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="IH 50 only, batch 1 and 16")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    ih_lens, batches = ([50], [1, 16]) if args.quick else ([50, 200], [1, 128])
    repeats = args.repeats or (5 if args.quick else 9)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), d=64, 2 layers, "
          f"PA {PA_GROUPS}x{PA_SIZE}, C={CANDIDATES}; ratio to K=0 (ms in parentheses), "
          f"median of {repeats}")
    print(format_header())
    rows = run(ih_lens, batches, repeats)

    def ratio(mode: str, path: str, steps: int) -> float:
        row = [r for r in rows if r["mode"] == mode and r["path"] == path
               and r["ih_len"] == max(ih_lens) and r["batch"] == max(batches)][0]
        return round(row["ratio"][steps], 3)

    summary = {
        "ih_len": max(ih_lens), "batch": max(batches), "quick": args.quick,
        "backend": jax.default_backend(),
        "retrieval_k2_cached_ratio": ratio("retrieval", "kv-cache", 2),
        "ranking_k3_cached_ratio": ratio("ranking", "kv-cache", 3),
        "retrieval_k2_recompute_ratio": ratio("retrieval", "recompute", 2),
        "ranking_k3_recompute_ratio": ratio("ranking", "recompute", 3),
        "targets": {"retrieval_k2_cached_ratio": 1.15, "ranking_k3_cached_ratio": 1.25},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
