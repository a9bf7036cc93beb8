"""Training throughput and time-to-quality on MovieLens-100K: SASRec vs OnePiece K = 0, 1, 2.

OnePiece K=2 runs with and without preference anchors (``onepiece_k2_nopa``). ``sasrec_fast`` adds
OnePiece's optimizer recipe (``FAST``: learning rate 4e-3, 50 warm-up steps, which OnePiece's
config uses itself) to SASRec's config, so the two models also meet on one recipe; the target
stays the configured SASRec's quality.

Each model trains with validation every ``--eval-every`` steps and at its last step (full
catalogue, history excluded; 0 = once per epoch); the target quality is the SASRec run's best
validation NDCG@10, and "seconds to baseline quality" is the training wall time (compilation
included, validation excluded) until a model's validation NDCG@10 first reaches it (null if it
never does within the epoch budget), with the step it happens at. Examples/s is measured over the
whole training run. Each model's test NDCG@10 (history excluded, best-validation checkpoint) is
printed beside them, so one figure of speed never stands without its quality.

    .venv/bin/python benchmarks/train_speed.py --data data/ml-100k  # 2 epochs, val. every 50 steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onepiece_jax.config import load_config
from onepiece_jax.experiments.quickstart import SHORT_BUDGET_RECIPE
from onepiece_jax.train.loop import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
FAST = list(SHORT_BUDGET_RECIPE)  # learning rate 4e-3, 50 warm-up steps (the quickstart's)
# the anchors add 36 tokens to 52 and make a step about 1.8x as costly, for a test NDCG@10 change
# within the seed spread on this dataset (docs/results/movielens.md): how fast is OnePiece
# without them?
NO_PA = ["--config.model.use_pa=False"]
MODELS = {
    "sasrec": ("ml100k_sasrec.py", []),
    "onepiece_k0": ("ml100k_onepiece.py", ["--config.model.reasoning_steps=0",
                                           "--config.loss.strategy=last_step"]),
    "onepiece_k1": ("ml100k_onepiece.py", ["--config.model.reasoning_steps=1",
                                           "--config.loss.strategy=last_step"]),
    "onepiece_k2": ("ml100k_onepiece.py", []),
    "onepiece_k2_nopa": ("ml100k_onepiece.py", NO_PA),
    "sasrec_fast": ("ml100k_sasrec.py", FAST),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--out", default="runs/train_speed", type=Path)
    parser.add_argument("--epochs", default=2, type=int)
    parser.add_argument("--eval-every", default=50, type=int,
                        help="validation interval in steps (0: once per epoch)")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    runs = {}
    for name in args.models.split(","):
        file, overrides = MODELS[name]
        config = load_config(ROOT / "configs" / file, [
            f"--config.dataset.path={args.data}", f"--config.train.epochs={args.epochs}",
            "--config.train.early_stop_patience=1000",
            f"--config.train.eval_every_steps={args.eval_every}", *overrides])
        out = train_and_evaluate(config, args.out / name, progress=False)
        examples = out["history"][-1]["step"] * config.train.batch_size
        runs[name] = {"history": out["history"],
                      "examples_per_s": examples / out["history"][-1]["train_seconds"],
                      "test_ndcg10": out["results"]["metrics"]["NDCG@10"]}
    target = max(h["metrics"]["NDCG@10"] for h in runs["sasrec"]["history"]) \
        if "sasrec" in runs else float("nan")
    print(f"target: SASRec best validation NDCG@10 = {target:.4f}")
    print(f"{'model':<22}{'examples/s':>12}{'best NDCG@10':>14}{'s to target':>13}"
          f"{'step':>7}{'test NDCG@10':>14}")
    reached = {}
    for name, run in runs.items():
        hits = [h for h in run["history"] if h["metrics"]["NDCG@10"] >= target]
        reached[name] = hits[0] if hits else None
        best = max(h["metrics"]["NDCG@10"] for h in run["history"])
        seconds, step = ((f"{reached[name]['train_seconds']:.0f}", str(reached[name]["step"]))
                         if reached[name] else ("never", "-"))
        print(f"{name:<22}{run['examples_per_s']:>12.0f}{best:>14.4f}{seconds:>13}{step:>7}"
              f"{run['test_ndcg10']:>14.4f}")
    print(json.dumps({
        "examples_per_s": {n: round(r["examples_per_s"], 1) for n, r in runs.items()},
        "seconds_to_baseline_quality": {n: h and h["train_seconds"] for n, h in reached.items()},
        "steps_to_baseline_quality": {n: h and h["step"] for n, h in reached.items()},
        "test_ndcg10": {n: r["test_ndcg10"] for n, r in runs.items()},
        "target_ndcg10": target, "epochs": args.epochs, "eval_every_steps": args.eval_every}))


if __name__ == "__main__":
    main()
