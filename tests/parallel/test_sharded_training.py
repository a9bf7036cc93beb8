"""Sharded embedding tables on 8 simulated CPU devices train and evaluate exactly like 1 device.

``tests/parallel/mesh_worker.py`` runs in two clean subprocesses (``XLA_FLAGS`` must set the
simulated device count before jax is imported): one device (mesh (1, 1)), and eight devices with
meshes (1, 8) and (2, 4) plus the legacy ``pmap`` step (the data-only mesh (8, 1) is
test_data_parallel's). Each trains the tiny planted job 5 steps through the real setup
(``make_job``: padded, row-sharded tables and catalog; sharded ``init_state``;
``make_train_step``; ``Job.put``) and evaluates it on validation against the sharded item
matrix. Floats are compared relative to each array's scale with a floor of 1 (the loss is
O(100), where float32 itself resolves only ~1e-5): ``|a - b| <= 1e-5 * max(1, |a|)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.parallel.subproc import launch
from tests.train.conftest import planted_build  # noqa: F401  (session fixture, reused)

MESHES = ("1x8", "2x4")
TOL = 1e-5


def _launch(build_dir: Path, out: Path, devices: int, meshes: str, *extra: str):
    return launch("tests.parallel.mesh_worker", build_dir, out, devices, meshes, *extra,
                  devices=devices)


@pytest.fixture(scope="module")
def runs(planted_build, tmp_path_factory):  # noqa: F811
    """``(info, numbers)``: per run name ("1x1", "1x8", ..., "pmap") its info and arrays."""
    root = tmp_path_factory.mktemp("sharded")
    procs = [_launch(planted_build, root / "one", 1, "1x1"),
             _launch(planted_build, root / "eight", 8, ",".join(MESHES), "--pmap")]
    for proc in procs:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"worker failed:\n{log[-4000:]}"
    info, numbers = {}, {}
    for sub in ("one", "eight"):
        info.update(json.loads((root / sub / "info.json").read_text()))
        for name in info:
            path = root / sub / f"{name}.npz"
            if path.is_file():
                numbers[name] = dict(np.load(path))
    return info, numbers


def _scaled_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b), initial=0.0)) / max(1.0, float(np.max(np.abs(a),
                                                                            initial=0.0)))


@pytest.mark.parametrize("mesh", [*MESHES, "pmap"])
def test_loss_curve_equals_one_device(runs, mesh):
    info, _ = runs
    ref, got = info["1x1"]["losses"], info[mesh]["losses"]
    assert len(ref) == len(got) == 5 and np.all(np.isfinite(ref))
    assert ref[-1] < ref[0]  # it is learning, not a constant
    for step, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert abs(a - b) <= TOL * max(1.0, abs(a)), (mesh, step, a, b)


@pytest.mark.parametrize("mesh", [*MESHES, "pmap"])
def test_parameters_after_five_steps_equal_one_device(runs, mesh):
    _, numbers = runs
    ref, got = numbers["1x1"], numbers[mesh]
    names = sorted(k for k in ref if k.startswith("param/"))
    assert len(names) > 10 and names == sorted(k for k in got if k.startswith("param/"))
    worst = max((_scaled_error(ref[k], got[k]), k) for k in names)
    assert worst[0] <= TOL, worst


@pytest.mark.parametrize("mesh,model", [("1x8", 8), ("2x4", 4)])
def test_every_table_and_its_adam_moments_are_split_over_the_model_axis(runs, mesh, model):
    layout = runs[0][mesh]["state_layout"]
    tables = [k for k in layout if k.startswith("params/")]
    assert {"params/embedder/tables/item_item_id/embedding",
            "params/embedder/tables/user_user_id/embedding",
            "params/embedder/tables/item_category/embedding"} <= set(tables)
    for name in tables:
        slots = [name.replace("params/", f"opt_state/1/0/{m}/") for m in ("mu", "nu")]
        for leaf in (name, *slots):
            (rows, width), (shard_rows, shard_width) = layout[leaf]
            assert rows % model == 0 and shard_rows * model == rows, (leaf, layout[leaf])
            assert shard_width == width, leaf
    # nothing else is sharded: dense layers, positions and scalars stay replicated
    assert all("/tables/" in k and k.endswith("/embedding") for k in layout), sorted(layout)
    assert runs[0][mesh]["vocab_multiple"] == model
    assert runs[0]["1x1"]["state_layout"] == {}  # one device: nothing to split


@pytest.mark.parametrize("mesh", ["1x8", "2x4"])
def test_train_step_never_gathers_a_whole_table(runs, mesh):
    info = runs[0][mesh]
    tables = {",".join(map(str, shape)) for shape, _ in info["state_layout"].values()}
    gathered = set(info["train_step_all_gathers"])
    assert not tables & gathered, (tables & gathered)


@pytest.mark.parametrize("mesh,shards", [("1x8", 8), ("2x4", 4)])
def test_sharded_full_catalogue_evaluation_equals_one_device(runs, mesh, shards):
    info, numbers = runs
    (rows, dim), (shard_rows, _) = info[mesh]["item_matrix"]
    assert rows >= 151 and shard_rows * shards == rows, info[mesh]["item_matrix"]
    ref, got = info["1x1"]["validation"], info[mesh]["validation"]
    assert ref["count"] == got["count"] == 120
    for name, value in ref.items():
        assert abs(value - got[name]) <= 1e-9, (name, value, got[name])
    np.testing.assert_array_equal(numbers[mesh]["topk_ids"], numbers["1x1"]["topk_ids"])
    assert _scaled_error(numbers["1x1"]["topk_scores"], numbers[mesh]["topk_scores"]) <= TOL
