"""Host overhead of the training loop: how close it runs to back-to-back device steps.

On a fast accelerator a step takes milliseconds, so a host that waits for every step before it
prepares the next batch leaves the device idle for the batch's gather and transfer. The loop reads
each step's finiteness flag (a device sync) only after dispatching the next step. This script
measures, on the same compiled step and the same batches, with variants timed round-robin:

- ``device only``: pre-staged batches, back to back (the floor);
- ``sync each step``: prepare a batch, run the step, read its flag (the old loop);
- ``check one late``: the same, reading the previous step's flag after dispatching the next;
- ``training loop``: ``train_and_evaluate`` itself, from the examples/s it logs (the first
  window, with compilation, left out).

The default model is tiny (d=16, 1 layer, batch 64), so a CPU step is short and the host's share
shows, as with a real model on a GPU; ``--config.*`` overrides change it.

    .venv/bin/python benchmarks/loop_overhead.py --data data/ml-100k
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax

from onepiece_jax.config import load_config
from onepiece_jax.data.loader import BatchIterator, device_batch
from onepiece_jax.train import loop
from onepiece_jax.train.step import init_state, make_optimizer, make_train_step

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.model.d_model=16", "--config.model.num_layers=1",
        "--config.train.batch_size=64"]


def harness(config, workdir: Path, steps: int, repeats: int) -> dict[str, float]:
    """Median ms per step of the three hand-driven variants on one compiled step."""
    job = loop.make_job(config, workdir)
    arrays = job.data.load_split("train")
    size = int(config.train.batch_size)
    optimizer = make_optimizer(config.train, steps)
    example = job.example_batch(arrays)
    shardings = job.state_shardings(optimizer, example)
    state = init_state(job.model, optimizer, example, job.catalog, jax.random.key(0), shardings)
    step = make_train_step(job.model, job.objective, optimizer, job.mesh, shardings,
                           job.catalog_sharding)
    rng = jax.random.key(1)

    def batches():
        it = BatchIterator(arrays, size, shuffle=True, seed=0, drop_remainder=True)
        return (job.put(device_batch(next(it))) for _ in range(steps))

    def device_only(state):
        staged = list(batches())
        jax.block_until_ready(staged)
        start = time.perf_counter()
        for b in staged:
            state, _ = step(state, b, job.catalog, job.tables, rng)
        jax.block_until_ready(state)
        return state, time.perf_counter() - start

    def host_loop(state, late: bool):
        """The loop's own ``_FiniteChecks``: each flag read one step late, or at once."""
        checks = loop._FiniteChecks(config.train, {"skipped_nonfinite": 0})
        start = time.perf_counter()
        for i, b in enumerate(batches(), 1):
            state, metrics = step(state, b, job.catalog, job.tables, rng)
            checks.push(metrics, i)
            if not late:
                checks.flush()
        checks.flush()
        return state, time.perf_counter() - start

    variants = {"device only": device_only,
                "sync each step": lambda s: host_loop(s, late=False),
                "check one late": lambda s: host_loop(s, late=True)}
    state, _ = device_only(state)  # compile and warm up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            state, seconds = run(state)
            times[name].append(seconds)
    return {name: 1e3 * statistics.median(t) / steps for name, t in times.items()}


def training_loop(config, workdir: Path, steps: int, repeats: int) -> float:
    """Median ms per step of ``train_and_evaluate``, from its own examples/s meter, logged every
    ``steps`` steps; the first window, which includes compilation, is left out."""
    config.train.update(max_steps=steps * (repeats + 1), epochs=1000, log_every_steps=steps,
                        early_stop_patience=1000)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        loop.train_and_evaluate(config, workdir, progress=False)
    rates = [float(r) for r in re.findall(r"^step \d+ .* ex/s (\d+)", out.getvalue(), re.M)]
    if len(rates) != repeats + 1:
        raise RuntimeError(f"expected {repeats + 1} logged windows, got {len(rates)}")
    return 1e3 * int(config.train.batch_size) / statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ml100k_sasrec.py"))
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--steps", default=100, type=int)
    parser.add_argument("--repeats", default=3, type=int)
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, [f"--config.dataset.path={args.data}", *TINY, *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config.dataset.build_dir = str(work / "build")  # built once, shared by every run
        ms = harness(config, work / "harness", args.steps, args.repeats)
        ms["training loop"] = training_loop(config, work / "loop", args.steps, args.repeats)
    floor = ms["device only"]
    print(f"batch {config.train.batch_size}, d={config.model.d_model}, "
          f"{config.model.num_layers} layer(s); {args.steps} steps, median of {args.repeats}")
    print(f"{'variant':<18}{'ms/step':>10}{'x device only':>15}")
    for name, value in ms.items():
        print(f"{name:<18}{value:>10.2f}{value / floor:>15.2f}")
    print(json.dumps({"ms_per_step": {k: round(v, 3) for k, v in ms.items()},
                      "loop_over_device_only": round(ms["training loop"] / floor, 3),
                      "sync_each_step_over_device_only": round(ms["sync each step"] / floor, 3)}))


if __name__ == "__main__":
    main()
