"""Data pipeline cost: build time, batch throughput and peak memory, MovieLens-100K vs 1M users.

Two datasets go through the same path as ``onepiece data build`` and training:

- **ml100k**: MovieLens-100K with ``configs/ml100k_onepiece.py`` (retrieval, leave-one-out);
- **synthetic**: ``generate_synthetic`` search logs (``--users``, default 1M, ``--items``) built
  with ``configs/synthetic_search_ranking.py`` (ranking, one request per user). Generation runs
  first and is timed on its own: it is not part of the build.

For each dataset it measures (i) the build — read the log, context engineering, TFDS
array_record write (``tfds_builder.build(read_log(config), ContextConfig.from_config(config),
out)``) — in a fresh subprocess whose peak RSS (``ru_maxrss``) is the build's peak memory,
(ii) in a second fresh subprocess: the time to load each split (``BuiltDataset.load_split``),
``BatchIterator`` throughput (shuffled, ranking requests regrouped into candidate groups of C,
as in training) over ``--batches`` batches, and the random-access batch read rate of the TFDS
data source itself (the streaming alternative to loading a split), and that subprocess's peak
RSS. It prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/data_pipeline.py --users 1000000 --workdir /tmp/data_pipeline

``--users 20000`` gives a quick run; ``--synthetic DIR`` reuses generated files.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ml100k": ROOT / "configs" / "ml100k_onepiece.py",
           "synthetic": ROOT / "configs" / "synthetic_search_ranking.py"}
SPLITS = ("train", "validation", "test")
GIB = 2.0 ** 30


def _peak_rss_gib() -> float:
    """Peak RSS of this process (and of any children it waited for), in GiB (Linux: KiB)."""
    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib * 1024 / GIB


# ---------------------------------------------------------------------------- workers
def _worker_generate(args: argparse.Namespace) -> dict:
    from onepiece_jax.data.readers.synthetic import generate_synthetic

    start = time.perf_counter()
    generate_synthetic(args.out, num_users=args.users, num_items=args.items, seed=0)
    files = sum(p.stat().st_size for p in Path(args.out).iterdir())
    return {"seconds": time.perf_counter() - start, "bytes": files,
            "peak_rss_gib": _peak_rss_gib()}


def _worker_build(args: argparse.Namespace) -> dict:
    from onepiece_jax.config import load_config
    from onepiece_jax.data.context import ContextConfig
    from onepiece_jax.data.tfds_builder import build, read_log

    config = load_config(args.config, [f"--config.dataset.path={args.data}"])
    start = time.perf_counter()
    log = read_log(config)
    read_s = time.perf_counter() - start
    read_rss = _peak_rss_gib()
    summary = build(log, ContextConfig.from_config(config), args.out)
    total = time.perf_counter() - start
    return {"read_seconds": read_s, "context_write_seconds": total - read_s,
            "build_seconds": total, "events": log.num_events, "users": log.num_users,
            "items": log.num_items, "examples": summary["examples"],
            "peak_rss_gib_after_read": read_rss, "peak_rss_gib": _peak_rss_gib()}


def _worker_iterate(args: argparse.Namespace) -> dict:
    import numpy as np

    from onepiece_jax.config import load_config
    from onepiece_jax.data.loader import BatchIterator, BuiltDataset

    config = load_config(args.config, [f"--config.dataset.path={args.data}"])
    batch_size = int(config.train.batch_size)
    group = int(config.context.num_candidates) if config.mode == "ranking" else None
    ds = BuiltDataset.open(args.out)
    out: dict = {"batch_size": batch_size, "load_seconds": {}, "load_examples_per_s": {}}
    # the split read record by record, in shuffled batches (what each host reads with several)
    src = ds.records("train")
    n = len(src)
    order = np.random.default_rng(0).permutation(n)
    count = min(args.batches, -(-n // batch_size))
    start = time.perf_counter()
    for b in range(count):
        src.take(order[b * batch_size:(b + 1) * batch_size])
    read_s = time.perf_counter() - start
    out["source_examples_per_s"] = min(n, count * batch_size) / read_s
    del src
    arrays = None
    for split in reversed(SPLITS):  # train last: it stays loaded for the iterator
        start = time.perf_counter()
        arrays = ds.load_split(split)
        seconds = time.perf_counter() - start
        rows = next(iter(arrays.values())).shape[0]
        out["load_seconds"][split] = seconds
        out["load_examples_per_s"][split] = rows / seconds
        out[f"{split}_bytes"] = sum(v.nbytes for v in arrays.values())
    it = BatchIterator(arrays, batch_size, shuffle=True, seed=0, group_size=group)
    start = time.perf_counter()
    batch = next(it)  # builds the epoch view: regrouping + permutation of the whole split
    out["epoch_setup_seconds"] = time.perf_counter() - start
    examples, batches = int(batch["example_mask"].sum()), 1
    start = time.perf_counter()
    for batch in it:
        examples += int(batch["example_mask"].sum())
        batches += 1
        if batches >= args.batches:
            break
    steady = time.perf_counter() - start
    out["iterator_batches"] = batches
    out["iterator_examples_per_s"] = (examples - batch_size) / steady if batches > 1 else 0.0
    out["iterator_examples_per_s_with_setup"] = examples / (steady + out["epoch_setup_seconds"])
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


WORKERS = {"generate": _worker_generate, "build": _worker_build, "iterate": _worker_iterate}


def _run_worker(kind: str, log_path: Path, **kwargs) -> dict:
    """Runs one worker in a fresh interpreter (its own peak RSS) and returns its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for key, value in kwargs.items():
        cmd += [f"--{key}", str(value)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------- report
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(results: dict, gen: dict | None) -> str:
    rows = [("examples (train/val/test)", lambda r: "/".join(
                str(r["build"]["examples"][s]) for s in SPLITS)),
            ("events in the log", lambda r: f"{r['build']['events']:,}"),
            ("build: read log (s)", lambda r: _fmt(r["build"]["read_seconds"], ".1f")),
            ("build: context + TFDS write (s)",
             lambda r: _fmt(r["build"]["context_write_seconds"], ".1f")),
            ("build: total (s)", lambda r: _fmt(r["build"]["build_seconds"], ".1f")),
            ("build: examples/s", lambda r: _fmt(
                sum(r["build"]["examples"].values()) / r["build"]["build_seconds"], ",.0f")),
            ("build: peak RSS after read (GiB)",
             lambda r: _fmt(r["build"]["peak_rss_gib_after_read"], ".2f")),
            ("build: peak RSS (GiB)", lambda r: _fmt(r["build"]["peak_rss_gib"], ".2f")),
            ("load train split (s)", lambda r: _fmt(r["iterate"]["load_seconds"]["train"], ".1f")),
            ("load validation split (s)",
             lambda r: _fmt(r["iterate"]["load_seconds"]["validation"], ".2f")),
            ("load: examples/s", lambda r: _fmt(
                r["iterate"]["load_examples_per_s"]["train"], ",.0f")),
            ("train split in memory (GiB)",
             lambda r: _fmt(r["iterate"]["train_bytes"] / GIB, ".3f")),
            ("iterator: epoch setup (s)",
             lambda r: _fmt(r["iterate"]["epoch_setup_seconds"], ".2f")),
            ("iterator: examples/s", lambda r: _fmt(r["iterate"]["iterator_examples_per_s"],
                                                    ",.0f")),
            ("record reader, shuffled batches: ex/s",
             lambda r: _fmt(r["iterate"]["source_examples_per_s"], ",.0f")),
            ("load + iterate: peak RSS (GiB)",
             lambda r: _fmt(r["iterate"]["peak_rss_gib"], ".2f"))]
    names = list(results)
    head = f"{'':<38}" + "".join(f"{n:>22}" for n in names)
    lines = [head, "-" * len(head)]
    for label, get in rows:
        lines.append(f"{label:<38}" + "".join(f"{get(results[n]):>22}" for n in names))
    if gen is not None:
        lines.append(f"synthetic generation (not in the build): {gen['seconds']:.1f} s, "
                     f"{gen['bytes'] / GIB:.2f} GiB of files, peak RSS "
                     f"{gen['peak_rss_gib']:.2f} GiB")
    it = results[names[-1]]["iterate"]
    lines.append(f"iterator: batch size {it['batch_size']}, {it['iterator_batches']} batches; "
                 "ranking examples are candidate groups of C")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", default="../shared/data/ml-100k", type=Path)
    parser.add_argument("--synthetic", type=Path, default=None,
                        help="a folder written by generate_synthetic (default: generate one)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=None, help="default: as many as users")
    parser.add_argument("--batches", type=int, default=500, help="batches timed per iterator")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where builds go (default: a temporary folder, removed after)")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    items = args.items or args.users
    temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="data_pipeline_")) if temp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        gen = None
        synth = args.synthetic
        if synth is None:
            synth = work / f"synthetic_{args.users}"
            print(f"generating {args.users:,} users x {items:,} items into {synth} ...",
                  flush=True)
            gen = _run_worker("generate", work / "generate.log", out=synth, users=args.users,
                              items=items)
        datasets = {} if args.skip_ml100k else {"ml100k": args.ml100k.resolve()}
        datasets["synthetic"] = synth.resolve()
        results = {}
        for name, data in datasets.items():
            out = work / f"build_{name}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"building {name} from {data} ...", flush=True)
            common = dict(config=CONFIGS[name], data=data, out=out)
            build = _run_worker("build", work / f"build_{name}.log", **common)
            print(f"  built in {build['build_seconds']:.1f} s, peak RSS "
                  f"{build['peak_rss_gib']:.2f} GiB; loading and iterating ...", flush=True)
            iterate = _run_worker("iterate", work / f"iterate_{name}.log", batches=args.batches,
                                  **common)
            results[name] = {"build": build, "iterate": iterate}
        print()
        print(_table(results, gen))
        syn = results["synthetic"]
        summary = {
            "synthetic_users": syn["build"]["users"],
            "synthetic_items": syn["build"]["items"],
            "synthetic_events": syn["build"]["events"],
            "peak_rss_gib_synthetic_1m": (round(syn["build"]["peak_rss_gib"], 3)
                                          if syn["build"]["users"] >= 1_000_000 else None),
            "peak_rss_gib_synthetic": round(syn["build"]["peak_rss_gib"], 3),
            "generate_seconds_synthetic": round(gen["seconds"], 1) if gen else None,
        }
        for name, r in results.items():
            b, it = r["build"], r["iterate"]
            summary.update({
                f"build_seconds_{name}": round(b["build_seconds"], 2),
                f"read_seconds_{name}": round(b["read_seconds"], 2),
                f"peak_rss_gib_{name}": round(b["peak_rss_gib"], 3),
                f"examples_{name}": b["examples"],
                f"load_train_seconds_{name}": round(it["load_seconds"]["train"], 2),
                f"iterator_examples_per_s_{name}": round(it["iterator_examples_per_s"], 1),
                f"source_examples_per_s_{name}": round(it["source_examples_per_s"], 1),
                f"peak_rss_gib_iterate_{name}": round(it["peak_rss_gib"], 3),
            })
        print(json.dumps(summary))
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
