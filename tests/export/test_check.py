"""serve-check: the bundle, run without Flax or this package, equals the in-process model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from onepiece_jax.cli import main
from onepiece_jax.export import serve
from onepiece_jax.export.check import isolated_python, serve_check


@pytest.mark.parametrize("module", ["flax", "onepiece_jax.export.serve", "orbax.checkpoint"])
def test_the_isolated_runtime_process_cannot_import_the_training_stack(module):
    proc = isolated_python(f"import {module}")
    assert proc.returncode != 0
    assert f"{module.partition('.')[0]} is blocked" in proc.stderr


def test_retrieval_bundle_reproduces_the_model_for_batches_1_7_128(retrieval_bundle, capsys):
    assert main(["serve-check", str(retrieval_bundle), "--batch-sizes", "1,7,128"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["batch"] for r in report["rows"]] == [1, 7, 128]
    assert report["rows"][-1]["real_rows"] == 120  # the whole test split, 8 padding rows
    assert report["parity_max_abs"] <= 1e-5 and report["ok"]
    assert not report["runtime"]["flax_loaded"] and not report["runtime"]["onepiece_jax_loaded"]


def test_ranking_bundle_reproduces_the_model_for_batches_1_7_128(ranking_bundle):
    report = serve_check(ranking_bundle, batch_sizes=(1, 7, 128))
    assert {r["function"] for r in report["rows"]} == {"ranker"}
    assert report["parity_max_abs"] <= 1e-5 and report["ok"], report


def test_serve_check_refuses_a_build_with_other_vocabularies(retrieval_bundle, planted_build,
                                                             tmp_path):
    other = tmp_path / "renumbered"
    other.mkdir()
    shutil.copy(planted_build / "features.json", other)
    with np.load(planted_build / "catalog.npz") as npz:
        tables = dict(npz)
    tables["user/user_id"] = tables["user/user_id"][::-1].copy()  # users renumbered
    np.savez(other / "catalog.npz", **tables)
    with pytest.raises(serve.BundleError, match=r"vocabulary mismatch .*: user/user_id: bundle "):
        serve_check(retrieval_bundle, data=other)
