"""Checkpointed workdirs (retrieval and ranking, on the tiny planted data) and their bundles, made
once per session; tests that damage a bundle or a workdir work on copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import pytest

from onepiece_jax.export.bundle import export_workdir
from tests.train.conftest import (  # noqa: F401  (planted_build: session fixture, reused)
    planted_build,
    planted_ranking_log,
    tiny_config,
    tiny_ranking_config,
)

STEP = 3


def checkpointed_workdir(config, workdir: Path) -> Path:
    """A workdir as training leaves it — config.json and a best + latest checkpoint of a train
    state, written by the training code — without training (export reads the format, not the
    values; parity holds for any parameters)."""
    from onepiece_jax.train.checkpoint import Checkpoints
    from onepiece_jax.train.loop import make_job
    from onepiece_jax.train.step import init_state, make_optimizer

    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    job = make_job(config, workdir)
    example = job.example_batch(job.data.load_split("validation"))
    state = init_state(job.model, make_optimizer(config.train, 10), example, job.catalog,
                       jax.random.key(1))
    book = {"history": [{"epoch": 1, "step": STEP, "value": 0.25, "metrics": {}}],
            "best": 0.25}
    ckpts = Checkpoints(workdir, 2)
    ckpts.save(STEP, state, book, best_value=0.25)
    ckpts.close()
    return workdir


@pytest.fixture(scope="session")
def retrieval_workdir(planted_build, tmp_path_factory) -> Path:  # noqa: F811
    return checkpointed_workdir(tiny_config(str(planted_build)),
                                tmp_path_factory.mktemp("export") / "retrieval")


@pytest.fixture(scope="session")
def ranking_workdir(tmp_path_factory) -> Path:
    from onepiece_jax.train.loop import ensure_built

    root = tmp_path_factory.mktemp("export_ranking")
    config = tiny_ranking_config(str(root / "build"))
    ensure_built(config, root, log=planted_ranking_log())
    return checkpointed_workdir(config, root / "ranking")


@pytest.fixture(scope="session")
def retrieval_bundle(retrieval_workdir, tmp_path_factory) -> Path:
    """Exported with the CLI, for CPU and CUDA (one multi-platform artefact)."""
    from onepiece_jax.cli import main

    out = tmp_path_factory.mktemp("bundles") / "retrieval"
    assert main(["export", "--workdir", str(retrieval_workdir), "--out", str(out),
                 "--platforms", "cpu,cuda"]) == 0
    return out


@pytest.fixture(scope="session")
def ranking_bundle(ranking_workdir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "ranking"
    export_workdir(ranking_workdir, out)
    return out


def copy_bundle(bundle: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bundle, dest))


@pytest.fixture(scope="session")
def retrieval_runtime(retrieval_bundle):
    """The loaded bundle, shared so its compiled programs are too."""
    from onepiece_jax.export import serve

    return serve.load_bundle(retrieval_bundle)


def split_head(workdir: Path, size: int) -> dict:
    """The head of the workdir's test split as the pipeline batches it."""
    from onepiece_jax.export.bundle import load_served, pipeline_batches

    served = load_served(workdir)
    return pipeline_batches(served.data, served.config, "test", [size])[0]


@pytest.fixture(scope="session")
def retrieval_batch(retrieval_workdir) -> dict:
    return split_head(retrieval_workdir, 5)
