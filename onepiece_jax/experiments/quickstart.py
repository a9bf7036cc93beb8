"""The README's first command: MovieLens-100K, OnePiece vs the in-framework SASRec, on test.

Fetches the data if missing, trains both models (each resumable in its own workdir), evaluates
the best validation checkpoint of each on the test split under the same protocol, prints a
side-by-side table, and plots validation NDCG@10 per epoch for both.
"""

from __future__ import annotations

import json
from pathlib import Path

from onepiece_jax.config import load_config
from onepiece_jax.data.fetch import fetch_ml100k

CONFIGS = {"SASRec": "ml100k_sasrec.py", "OnePiece": "ml100k_onepiece.py"}
# SASRec's config keeps learning rate 1e-3 with 200 warm-up steps, set for 5-40 epochs; in a 1-2
# epoch run (379-758 steps) that warm-up is a quarter to a half of training. This recipe lifts both
# models at that budget (README, benchmarks/train_speed.py), so the short runs use it, both alike
# (OnePiece's config has used it at every budget since it won on validation there too).
SHORT_BUDGET_RECIPE = ("--config.train.learning_rate=4e-3", "--config.train.warmup_steps=50")
# "small" fits the README's 15-minute promise on 2 CPU cores (an OnePiece epoch costs about three
# SASRec epochs there); "full" trains each config to its own early-stopping budget.
BUDGETS = {"small": {"SASRec": ["--config.train.epochs=2", *SHORT_BUDGET_RECIPE],
                     "OnePiece": ["--config.train.epochs=1", *SHORT_BUDGET_RECIPE]},
           "full": {"SASRec": [], "OnePiece": []}}
METRICS = ("NDCG@10", "HR@10", "NDCG@50", "HR@50", "MRR")


def config_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "configs"


def run_quickstart(out: str | Path, *, data_dir: str | Path, budget: str = "small",
                   seed: int = 0) -> dict:
    from onepiece_jax.train.loop import train_and_evaluate

    out = Path(out)
    data = fetch_ml100k(data_dir)
    results = {}
    for name, file in CONFIGS.items():
        overrides = [f"--config.dataset.path={data}", f"--config.seed={seed}",
                     "--config.train.log_every_steps=100", *BUDGETS[budget][name]]
        config = load_config(config_dir() / file, overrides)
        print(f"== training {name} ({file}, budget {budget})", flush=True)
        results[name] = train_and_evaluate(config, out / name.lower(), progress=True)
    table = comparison_table(results)
    print(table)
    (out / "comparison.md").write_text(table + "\n")
    plot_validation(results, out / "validation_ndcg10.png")
    summary = {name: r["results"]["metrics"] for name, r in results.items()}
    (out / "comparison.json").write_text(json.dumps(summary, indent=1))
    return results


def comparison_table(results: dict) -> str:
    names = list(results)
    protocol = next(iter(results.values()))["results"]["protocol"]
    rows = [f"protocol: {protocol}", "",
            "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in METRICS:
        cells = [f"{results[n]['results']['metrics'][metric]:.4f}" for n in names]
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_validation(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["metrics"]["NDCG@10"] for h in r["history"]], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("MovieLens-100K, leave-one-out, full catalogue, history excluded", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
