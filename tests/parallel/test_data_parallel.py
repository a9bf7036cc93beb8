"""Data parallelism: 8 simulated CPU devices train exactly like 1 device.

Both sides run ``tests/parallel/dp_worker.py`` in a clean subprocess (``XLA_FLAGS`` must set the
simulated device count before jax is imported), through the real setup: ``make_job`` (mesh,
replicated catalog and negative tables), ``init_state``, ``make_train_step`` and ``put_batch``,
with the same three batches and the same rng. Compared: every metric of the first train step, the
gradient of ``compute_loss`` (params replicated, batch sharded) and the parameters after three
steps. Floats are compared relative to each array's scale with a floor of 1 (the loss is O(100),
where float32 itself resolves only ~1e-5): ``max|a - b| <= 1e-5 * max(1, max|a|)``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from onepiece_jax.parallel.mesh import check_batch_size, make_mesh
from tests.parallel.subproc import launch
from tests.train.conftest import planted_build  # noqa: F401  (session fixture, reused)

DEVICES = 8
TOL = 1e-5


def _launch(build_dir: Path, out: Path, devices: int) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return launch("tests.parallel.dp_worker", build_dir, out, devices, devices=devices)


@pytest.fixture(scope="module")
def runs(planted_build, tmp_path_factory):  # noqa: F811
    """``{devices: (numbers, info)}`` for 1 and 8 devices; the two subprocesses run concurrently."""
    root = tmp_path_factory.mktemp("data_parallel")
    procs = {n: _launch(planted_build, root / f"d{n}", n) for n in (1, DEVICES)}
    result = {}
    for n, proc in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{n}-device worker failed:\n{log[-4000:]}"
        numbers = dict(np.load(root / f"d{n}" / "numbers.npz"))
        info = json.loads((root / f"d{n}" / "info.json").read_text())
        result[n] = (numbers, info)
    return result


def _worst(runs, prefix: str) -> tuple[float, str]:
    """The largest scaled difference ``max|a-b| / max(1, max|a|)`` over arrays named ``prefix*``."""
    one, many = runs[1][0], runs[DEVICES][0]
    names = sorted(k for k in one if k.startswith(prefix))
    assert names and names == sorted(k for k in many if k.startswith(prefix))
    worst = (0.0, "")
    for k in names:
        a, b = one[k].astype(np.float64), many[k].astype(np.float64)
        assert a.shape == b.shape, k
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), k
        err = float(np.max(np.abs(a - b), initial=0.0)) / max(1.0, float(np.max(np.abs(a),
                                                                                initial=0.0)))
        worst = max(worst, (err, k))
    return worst


def test_workers_ran_on_the_meshes_they_claim(runs):
    info1, info8 = runs[1][1], runs[DEVICES][1]
    assert info1["devices"] == 1 and info1["mesh"] == {"data": 1, "model": 1}
    assert info8["devices"] == DEVICES and info8["mesh"] == {"data": DEVICES, "model": 1}
    assert info1["param_sharding_replicated"] and info8["param_sharding_replicated"]


def test_batch_is_really_sharded_over_the_data_axis(runs):
    shards = runs[DEVICES][1]["shards"]
    assert {"user", "ih_item", "pool_item", "pool_label", "target", "example_mask"} <= set(shards)
    for name, (shape, shard) in shards.items():
        batch = shape[0]
        assert batch % DEVICES == 0, name
        assert shard == [batch // DEVICES, *shape[1:]], (name, shape, shard)
    for name, (shape, shard) in runs[1][1]["shards"].items():
        assert shard == shape, name


def test_first_step_loss_and_every_metric_match(runs):
    one, many = runs[1][0], runs[DEVICES][0]
    metrics = sorted(k for k in one if k.startswith("metric/"))
    assert {"metric/loss", "metric/grad_norm", "metric/finite"} <= set(metrics)
    assert any(k.startswith("metric/i2u/") for k in metrics)  # the cross-example (B×B) term
    assert float(one["metric/finite"]) == float(many["metric/finite"]) == 1.0
    err, name = _worst(runs, "metric/")
    assert err <= TOL, (err, name, float(one[name]), float(many[name]))


def test_gradients_match(runs):
    one = runs[1][0]
    grads = [k for k in one if k.startswith("grad")]
    assert len(grads) > 10 and any(np.any(one[k] != 0) for k in grads)
    err, name = _worst(runs, "grad")
    assert err <= TOL, (err, name)


def test_parameters_after_three_steps_match(runs):
    err, name = _worst(runs, "param")
    assert err <= TOL, (err, name)


def test_loss_curve_over_five_steps_matches(runs):
    """Mesh (8, 1) of issue #6's acceptance (meshes (1, 8) and (2, 4): test_sharded_training)."""
    one, many = runs[1][1]["losses"], runs[DEVICES][1]["losses"]
    assert len(one) == len(many) == 5 and one[-1] < one[0]
    for step, (a, b) in enumerate(zip(one, many, strict=True)):
        assert abs(a - b) <= TOL * max(1.0, abs(a)), (step, a, b)


def test_mesh_and_batch_size_rejections_on_eight_devices(runs):
    msg = runs[DEVICES][1]["rejections"]
    for key in ("mesh 3x2", "mesh 16x1"):
        assert "config.mesh" in msg[key] and "8 available devices" in msg[key], msg[key]
    assert "config.mesh.shape=(-1, 3)" in msg["mesh -1x3"], msg["mesh -1x3"]
    assert msg["mesh 4x2"] is None and msg["mesh -1x2"] is None
    assert "config.train.batch_size=60" in msg["batch 60 on data=-1x1"]
    assert "8 devices" in msg["batch 60 on data=-1x1"]
    assert msg["batch 64 on data=-1x1"] is None and msg["batch 60 on data=4x2"] is None
    assert "config.train.batch_size=60" in msg["make_job batch 60"]


def test_make_mesh_rejects_a_shape_that_does_not_match_the_devices():
    n = jax.device_count()
    with pytest.raises(ValueError, match=r"config\.mesh"):
        make_mesh(n + 1, 1)
    with pytest.raises(ValueError, match=r"config\.mesh"):
        make_mesh(n, 2)
    assert dict(make_mesh(-1, 1).shape) == {"data": n, "model": 1}


def test_check_batch_size_rejects_a_batch_not_divisible_by_the_data_axis():
    mesh = SimpleNamespace(shape={"data": 8, "model": 1})
    with pytest.raises(ValueError, match=r"config\.train\.batch_size=12 .* 8 devices"):
        check_batch_size(12, mesh)
    check_batch_size(16, mesh)
