"""What the multi-process test runs, shared by its workers and its single-process reference."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

RANKING_BATCH = 32


def run_config(cfg, mesh: tuple[int, int]):
    """The tiny planted job, 3 steps, on ``mesh``."""
    cfg.mesh.shape = mesh
    cfg.train.update(max_steps=3, keep_checkpoints=3)
    return cfg


def real_rows(params, model_config) -> dict[str, np.ndarray]:
    """``{path: array}`` of the parameters, whole on every process, every table cut to its real
    rows (the row padding depends on the mesh) after checking its padding rows are still zero."""
    from onepiece_jax.parallel.distributed import to_host
    from onepiece_jax.parallel.rules import path_str

    cfg = model_config
    vocab = {f"{e}_{f.name}": f.vocab_size for e in ("item", "user", "query", "context")
             for f in cfg.active_features(e)}
    vocab["behavior"] = cfg.num_behaviors + 1
    out = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, value = path_str(p), to_host(leaf)
        match = re.search(r"tables/([^/]+)/embedding$", name)
        if match:
            rows = vocab[match.group(1)]
            assert not np.any(value[rows:]), f"{name}: padding rows changed"
            value = value[:rows]
        out[name] = value
    return out


def restored_params(cfg, workdir: str | Path) -> dict[str, np.ndarray]:
    """The latest checkpoint's parameters (see :func:`real_rows`)."""
    from onepiece_jax.train.checkpoint import Checkpoints
    from onepiece_jax.train.loop import make_job
    from onepiece_jax.train.step import make_optimizer

    job = make_job(cfg, workdir)
    template = job.state_template(make_optimizer(cfg.train, 1),
                                  job.example_batch(job.data.load_split("validation")))
    state, _, _ = Checkpoints(workdir, 3).restore(template, "latest")
    return real_rows(state.params, job.model.config)


def ranking_metrics(ranking_build: str | Path) -> dict:
    """AUC/GAUC of a fixed, tie-rich score over the planted ranking test split, each process
    feeding its rows of every batch."""
    from onepiece_jax.data.loader import BuiltDataset
    from onepiece_jax.eval.runner import evaluate_ranking
    from onepiece_jax.parallel.mesh import make_mesh, process_rows, put_batch

    mesh = make_mesh(-1, 1)
    data = BuiltDataset.open(ranking_build)
    tasks = tuple(data.spec["tasks"])

    @jax.jit
    def score_fn(batch):
        s = ((batch["cis_item"] * 7 + batch["user"][:, None] * 3) % 11).astype(jnp.float32)
        return jnp.stack([s, -s], axis=-1)[..., :len(tasks)]

    return evaluate_ranking(score_fn, data.load_split("test"), batch_size=RANKING_BATCH,
                            group_size=6, task_names=tasks, dataset="planted", split="test",
                            put=lambda b: put_batch(b, mesh),
                            rows=process_rows(mesh, RANKING_BATCH))["metrics"]
