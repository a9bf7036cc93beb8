"""Serving: latency of the exported user tower and ranker (C=12) for K = 0..3 reasoning steps,
their parity with the in-process model, and exact vs HNSW top-100 item search.

Each function is exported exactly as ``onepiece export`` does it (``export.bundle``: symbolic
batch, weights as arguments, KV-cached reasoning), serialized, deserialized and called through
``Exported.call`` under ``jit``, as the bundle's runtime does. The model and data are the
synthetic ones of ``reasoning_latency.py`` (d=64, 2 layers, 4 heads, PA 3x30, IH ``--ih-len``)
with a catalogue of ``--items`` items; parameters are shared by every K (the RPE table has 4
rows). Latency is p50 / p99 over ``--repeats`` calls per (function, K, batch), the K variants
timed round-robin so load from other processes hits them alike. The item index part scores the
128 user vectors of K=3 against every item vector: exact (``export.index.ExactIndex``, jitted
brute force) vs HNSW (``hnswlib``), recall@100 and the query speed-up at 1 and 128 queries.

    .venv/bin/python benchmarks/serving.py               # 100k items, 100 repeats
    .venv/bin/python benchmarks/serving.py --quick       # 20k items, 30 repeats

The last line is one JSON object: ``parity_max_abs``, ``ann_recall_at_100``, the K=3 latency
ratios and the ANN speed-ups.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import numpy as np
import reasoning_latency as synth  # the synthetic model and data (benchmarks/ is on sys.path)

from onepiece_jax.export.bundle import export_function, ranker, user_tower
from onepiece_jax.export.index import ExactIndex, HnswIndex, recall_at_k
from onepiece_jax.model import OnePiece

BATCHES = (1, 128)
TOP_K = 100


def exported_functions(mode: str, ih_len: int, catalog: dict, probe: dict) -> tuple[dict, dict]:
    """``({K: (exported call, in-process fn)}, weights)`` for K = 0..MAX_STEPS."""
    base = synth.synthetic_config(mode, ih_len)
    params = jax.jit(OnePiece(base).init)(jax.random.key(0), probe, catalog)["params"]
    weights = {"params": params, "catalog": catalog}
    inputs = {k: {"shape": ["b", *v.shape[1:]]} for k, v in probe.items()}
    out = {}
    for steps in range(synth.MAX_STEPS + 1):
        model = OnePiece(dataclasses.replace(base, reasoning_steps=steps, use_kv_cache=True))
        fn = (functools.partial(user_tower, model, steps) if mode == "retrieval" else
              functools.partial(ranker, model, tuple((steps, t) for t in range(synth.TASKS))))
        blob = export_function(fn, weights, inputs, ["cpu"]).serialize()
        loaded = jax.export.deserialize(bytearray(blob))
        out[steps] = (jax.jit(loaded.call), jax.jit(fn))
    return out, weights


def latencies(calls: dict, weights: dict, batch: dict, repeats: int) -> dict[int, list[float]]:
    """Milliseconds per call for each K, after a compile + warm-up call, round-robin."""
    for call in calls.values():
        jax.block_until_ready(call(weights, batch))
        jax.block_until_ready(call(weights, batch))
    samples: dict[int, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(weights, batch))
            samples[k].append((time.perf_counter() - start) * 1e3)
    return samples


def serving_rows(ih_len: int, repeats: int, rng: np.random.Generator,
                 catalog: dict) -> tuple[list[dict], float, np.ndarray, dict]:
    """Latency rows, the parity max abs, the K=3 user vectors (batch 128) and retrieval weights."""
    rows, parity, queries, retrieval_weights = [], 0.0, None, None
    for mode in ("retrieval", "ranking"):
        cfg = synth.synthetic_config(mode, ih_len)
        fns, weights = exported_functions(mode, ih_len, catalog, synth.synthetic_batch(rng, cfg, 2))
        for size in BATCHES:
            batch = synth.synthetic_batch(rng, cfg, size)
            for call, reference in fns.values():
                exported, in_process = call(weights, batch), reference(weights, batch)
                parity = max(parity, float(np.abs(np.asarray(exported - in_process)).max()))
            ms = latencies({k: call for k, (call, _) in fns.items()}, weights, batch, repeats)
            p50 = [float(np.percentile(ms[k], 50)) for k in fns]
            p99 = [float(np.percentile(ms[k], 99)) for k in fns]
            rows.append({"function": "user_tower" if mode == "retrieval" else "ranker",
                         "M": cfg.layout().block_rows, "batch": size, "p50_ms": p50,
                         "p99_ms": p99, "p50_ratio": [t / p50[0] for t in p50],
                         "p99_ratio": [t / p99[0] for t in p99]})
            print(format_row(rows[-1]), flush=True)
            if mode == "retrieval" and size == max(BATCHES):
                queries = np.asarray(fns[synth.MAX_STEPS][0](weights, batch))
                retrieval_weights = weights
    return rows, parity, queries, retrieval_weights


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def index_report(weights: dict, queries: np.ndarray, ih_len: int, repeats: int) -> dict:
    """Exact vs HNSW top-100 over the whole catalogue's item vectors."""
    model = OnePiece(synth.synthetic_config("retrieval", ih_len))
    ids = np.arange(1, synth.NUM_ITEMS + 1, dtype=np.int32)
    vectors = np.asarray(jax.jit(lambda w, i: model.apply(
        {"params": w["params"]}, i, w["catalog"], method="item_vectors"))(weights, ids))
    exact = ExactIndex(vectors, ids)
    start = time.perf_counter()
    ann = HnswIndex(vectors, ids)
    build_s = time.perf_counter() - start
    _, exact_ids = exact.search(queries, TOP_K)
    _, ann_ids = ann.search(queries, TOP_K)
    report = {"items": int(ids.size), "queries": int(queries.shape[0]), "k": TOP_K,
              "ann_recall_at_100": recall_at_k(ann_ids, exact_ids),
              "hnsw_build_s": round(build_s, 2)}
    for n in (1, queries.shape[0]):
        exact_ms = median_ms(lambda n=n: exact.search(queries[:n], TOP_K), repeats)
        ann_ms = median_ms(lambda n=n: ann.search(queries[:n], TOP_K), repeats)
        report[f"exact_ms_q{n}"], report[f"ann_ms_q{n}"] = round(exact_ms, 3), round(ann_ms, 3)
        report[f"ann_speedup_q{n}"] = round(exact_ms / ann_ms, 2)
    return report


def format_header() -> str:
    ks = "".join(f"{'K=' + str(k) + ' p50 / p99':>24}" for k in range(1, synth.MAX_STEPS + 1))
    return f"{'function':<11}{'M':>3}{'B':>5}{'K=0 p50/p99 ms':>17}{ks}"


def format_row(row: dict) -> str:
    ratios = "".join(f"{a:>11.2f}x /{b:>6.2f}x    " for a, b in
                     zip(row["p50_ratio"][1:], row["p99_ratio"][1:], strict=True))
    return (f"{row['function']:<11}{row['M']:>3}{row['batch']:>5}"
            f"{row['p50_ms'][0]:>9.2f} /{row['p99_ms'][0]:>6.2f}{ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k items, 30 repeats")
    parser.add_argument("--items", type=int, default=None, help="catalogue size (100k)")
    parser.add_argument("--ih-len", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    synth.NUM_ITEMS = args.items or (20_000 if args.quick else 100_000)
    repeats = args.repeats or (30 if args.quick else 100)
    rng = np.random.default_rng(0)
    catalog = synth.synthetic_catalog(rng)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), d=64, 2 layers, "
          f"IH {args.ih_len}, PA {synth.PA_GROUPS}x{synth.PA_SIZE}, C={synth.CANDIDATES}, "
          f"{synth.NUM_ITEMS} items; exported functions (jax.export, KV cache); latency ratio to "
          f"K=0 ({repeats} calls each)")
    print(format_header())
    rows, parity, queries, weights = serving_rows(args.ih_len, repeats, rng, catalog)
    print(f"parity: max |exported - in-process| over every function, K and batch = {parity:.3g}")
    index = index_report(weights, queries, args.ih_len, max(5, repeats // 5))
    q = index["queries"]
    print(f"item index: {index['items']} items, {q} queries (user vectors, K=3): HNSW "
          f"recall@{TOP_K} vs exact {index['ann_recall_at_100']:.4f} (build "
          f"{index['hnsw_build_s']} s); 1 query: exact {index['exact_ms_q1']} ms, HNSW "
          f"{index['ann_ms_q1']} ms ({index['ann_speedup_q1']}x); {q} queries: exact "
          f"{index[f'exact_ms_q{q}']} ms, HNSW {index[f'ann_ms_q{q}']} ms "
          f"({index[f'ann_speedup_q{q}']}x)")

    def ratio(function: str, batch: int, which: str) -> float:
        row = next(r for r in rows if r["function"] == function and r["batch"] == batch)
        return round(row[which][-1], 3)

    summary = {"backend": jax.default_backend(), "quick": args.quick, "items": synth.NUM_ITEMS,
               "ih_len": args.ih_len, "repeats": repeats, "parity_max_abs": parity,
               "ann_recall_at_100": index["ann_recall_at_100"],
               "ann_speedup_q1": index["ann_speedup_q1"],
               "ann_speedup_q128": index[f"ann_speedup_q{q}"],
               **{f"{f}_k3_p50_ratio_b{b}": ratio(f, b, "p50_ratio")
                  for f in ("user_tower", "ranker") for b in BATCHES},
               **{f"{f}_k3_p99_ratio_b{b}": ratio(f, b, "p99_ratio")
                  for f in ("user_tower", "ranker") for b in BATCHES}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
