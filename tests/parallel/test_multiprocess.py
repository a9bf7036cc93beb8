"""Multi-host on localhost: 2 processes × 2 simulated CPU devices equal one process on one device.

Each process (``tests/parallel/mp_worker.py``) calls ``jax.distributed.initialize`` through
``config.distributed`` with gloo CPU collectives, reads only its rows of every training batch
(record by record), trains the tiny planted job for 3 steps on a (2, 2) mesh (data across the
processes, tables split over each process's two devices), validates, checkpoints (both processes
write their shards), restores the best checkpoint across processes and evaluates it on test. The
same job runs here on this process's one device as the reference, meanwhile. Ranking AUC/GAUC of
a fixed score are also computed with each process feeding half of every batch: they must be the
exact whole-split values.
"""

from __future__ import annotations

import json
import socket
import subprocess

import numpy as np
import pytest

from tests.parallel.mp_reference import ranking_metrics, restored_params, run_config
from tests.parallel.subproc import launch
from tests.train.conftest import (
    planted_build,  # noqa: F401  (session fixture, reused)
    planted_ranking_log,
    tiny_config,
    tiny_ranking_config,
)

PROCESSES, DEVICES = 2, 2
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str]) -> subprocess.Popen:
    return launch("tests.parallel.mp_worker", *args)


@pytest.fixture(scope="module")
def ranking_build(tmp_path_factory):
    from onepiece_jax.train.loop import ensure_built

    out = tmp_path_factory.mktemp("planted_ranking_build")
    return ensure_built(tiny_ranking_config(str(out)), out, log=planted_ranking_log())


@pytest.fixture(scope="module")
def runs(planted_build, ranking_build, tmp_path_factory):  # noqa: F811
    """``(workers, reference, root)``: each worker's result JSON and parameters, and the same
    from this process."""
    from onepiece_jax.train.loop import train_and_evaluate

    root = tmp_path_factory.mktemp("multiprocess")
    out = root / "out"
    out.mkdir()
    port = str(_free_port())
    procs = [_launch([str(planted_build), str(ranking_build), str(root / "mp"), str(out), port,
                      str(PROCESSES), str(i), str(DEVICES)]) for i in range(PROCESSES)]
    try:
        cfg = run_config(tiny_config(str(planted_build)), mesh=(-1, 1))
        reference = {"run": train_and_evaluate(cfg, root / "ref", progress=False),
                     "ranking": ranking_metrics(ranking_build),
                     "params": restored_params(cfg, root / "ref")}
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    workers = [{**json.loads((out / f"result-{i}.json").read_text()),
                "params": dict(np.load(out / f"params-{i}.npz")), "log": logs[i]}
               for i in range(PROCESSES)]
    return workers, reference, root


def _close(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), what
    for k in a:
        x, y = float(a[k]), float(b[k])
        assert (np.isnan(x) and np.isnan(y)) or abs(x - y) <= TOL * max(1.0, abs(x)), \
            (what, k, x, y)


def test_processes_formed_one_runtime(runs):
    workers, _, _ = runs
    for w in workers:
        assert w["process_count"] == PROCESSES
        assert w["devices"] == PROCESSES * DEVICES and w["local_devices"] == DEVICES


def test_validation_and_restored_test_results_equal_the_single_process_run(runs):
    workers, reference, _ = runs
    ref_hist, ref_res = reference["run"]["history"], reference["run"]["results"]
    assert [h["step"] for h in ref_hist] == [3]
    for w in workers:
        hist, res = w["run"]["history"], w["run"]["results"]
        assert [h["step"] for h in hist] == [3]
        _close(hist[-1]["metrics"], ref_hist[-1]["metrics"], "validation")
        _close(res["metrics"], ref_res["metrics"], "test")
        assert res["checkpoint"] == ref_res["checkpoint"] == {"which": "best", "step": 3}
        assert res["protocol"] == ref_res["protocol"]


def test_checkpointed_parameters_equal_the_single_process_run(runs):
    workers, reference, _ = runs
    ref = reference["params"]
    assert len(ref) > 10
    for w in workers:
        assert sorted(w["params"]) == sorted(ref)
        for k, a in ref.items():
            b = w["params"][k]
            assert a.shape == b.shape, k
            err = float(np.max(np.abs(a - b), initial=0.0)) / max(1.0, float(np.max(np.abs(a))))
            assert err <= TOL, (k, err)


def test_ranking_auc_is_aggregated_exactly_across_processes(runs):
    workers, reference, _ = runs
    ref = reference["ranking"]
    assert ref["view/count"] == 24 * 24 and 0.0 < ref["view/AUC"] < 1.0
    for w in workers:
        assert w["ranking"] == ref  # bit-identical: the same numbers, aggregated once


def test_process_zero_alone_wrote_the_run_files(runs):
    workers, _, root = runs
    run = root / "mp"
    assert json.loads((run / "results.json").read_text())["metrics"] == \
        workers[0]["run"]["results"]["metrics"]
    assert (run / "checkpoints" / "3" / "integrity.json").is_file()
    assert not list(run.rglob(".write_probe*"))
    assert '"protocol"' in workers[0]["log"] and '"protocol"' not in workers[1]["log"]
