"""Export: what a bundle holds, that it serves with the KV cache, and what export refuses."""

from __future__ import annotations

import json
import re
import shutil

import jax
import numpy as np
import pytest

from onepiece_jax.export import serve
from onepiece_jax.export.bundle import ExportError, export_workdir, match_params
from tests.export.conftest import STEP


def test_manifest_describes_model_data_versions_and_hashes_every_file(retrieval_bundle):
    manifest = serve.read_manifest(retrieval_bundle)
    model = manifest["model"]
    assert (model["mode"], model["reasoning_steps"], model["block_rows"]) == ("retrieval", 2, 2)
    assert model["step"] == STEP and model["kv_cache"] and model["served_step"] == 2
    assert manifest["functions"]["user_tower"]["inputs"]["ih_item"]["shape"] == ["b", 8]
    assert manifest["functions"]["user_tower"]["output"]["shape"] == ["b", "32"]
    assert set(manifest["functions"]["user_tower"]["platforms"]) == {"cpu", "cuda"}
    assert "pool_item" not in manifest["functions"]["user_tower"]["inputs"]  # labels stay out
    assert manifest["vocabularies"]["item/category"]["vocab_size"] == 6
    assert manifest["vocabularies"]["behaviors"]["values"] == ["view", "like"]
    assert "validation" in manifest["validation"]["protocol"]
    assert manifest["validation"]["value"] == 0.25
    assert {"jax", "flax", "numpy", "flatbuffers"} <= set(manifest["versions"])
    on_disk = {p.name for p in retrieval_bundle.iterdir()} - {serve.MANIFEST}
    assert set(manifest["files"]) == on_disk >= {"user_tower.jax", "weights.npz", "items.npy",
                                                 "item_ids.npy", "raw_ids.npz", "serve.py",
                                                 "index.py"}
    assert manifest["raw_ids"]["entities"] == {"item": {"count": 150, "dtype": "int64"},
                                               "user": {"count": 120, "dtype": "<U4"}}
    ids, vectors = serve.load_bundle(retrieval_bundle).items()
    assert vectors.shape == (150, 32) and vectors.dtype == np.float32
    np.testing.assert_array_equal(ids, np.arange(1, 151))


def test_ranking_bundle_has_the_ranker_and_no_item_index(ranking_bundle):
    manifest = serve.read_manifest(ranking_bundle)
    assert set(manifest["functions"]) == {"ranker"}
    assert manifest["model"]["num_candidates"] == manifest["model"]["block_rows"] == 6
    assert manifest["functions"]["ranker"]["inputs"]["cis_item"]["shape"] == ["b", 6]
    assert manifest["functions"]["ranker"]["output"]["shape"] == ["b", "6", "2"]
    assert manifest["items"] is None and not (ranking_bundle / "index.py").exists()


def _score_shapes(exported: jax.export.Exported, heads: int) -> set[tuple[int, int]]:
    """(rows, columns) of every heads-major matmul result f32[b, heads, q, ·] in the program:
    the attention scores [b, heads, q, k] and the mixed values [b, heads, q, head_dim] (the
    cached keys and values are not matmul results, so their S rows are not counted)."""
    text = exported.mlir_module()
    pattern = rf"dot_general[^\n]*-> tensor<\?x{heads}x(\d+)x(\d+)xf32>"
    return {(int(q), int(k)) for q, k in re.findall(pattern, text)}


def test_user_tower_encodes_the_base_once_then_k_steps_of_m_queries(retrieval_bundle,
                                                                    retrieval_workdir):
    """With the KV cache the base (N=16 tokens) is attended once and each of the K=2 steps has
    only M=2 queries against the grown cache; recomputing would attend N+M and N+2M queries."""
    import dataclasses

    from onepiece_jax.export.bundle import (
        export_function,
        input_specs,
        load_served,
        serving_functions,
    )
    from onepiece_jax.model.onepiece import OnePiece

    bundle = serve.load_bundle(retrieval_bundle)
    n, m = 16, 2
    cached = _score_shapes(bundle.functions["user_tower"], 2)
    assert {q for q, _ in cached} == {n, m} and {(m, n + m), (m, n + 2 * m)} <= cached
    served = load_served(retrieval_workdir)
    recompute = OnePiece(dataclasses.replace(served.model.config, use_kv_cache=False))
    fn = serving_functions(recompute, served.config)["user_tower"]
    slow = export_function(fn, served.weights, input_specs(served, served.example), ["cpu"])
    assert {q for q, _ in _score_shapes(slow, 2)} == {n, n + m, n + 2 * m}


def test_items_in_bfloat16_are_the_float32_vectors_rounded(retrieval_workdir, retrieval_bundle,
                                                           tmp_path):
    export_workdir(retrieval_workdir, tmp_path / "bf16", items_dtype="bfloat16")
    _, half = serve.load_bundle(tmp_path / "bf16").items()
    _, full = serve.load_bundle(retrieval_bundle).items()
    assert half.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=1e-2, atol=1e-3)


def test_export_refuses_a_checkpoint_that_does_not_match_the_config(retrieval_workdir,
                                                                    tmp_path):
    workdir = shutil.copytree(retrieval_workdir, tmp_path / "edited")
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["d_model"] = 48
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"does not match the model its config.json describes"
                                          r".*checkpoint \(\d+, 32\), config \(\d+, 48\)"):
        export_workdir(workdir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_corrupt_checkpoint(retrieval_workdir, tmp_path):
    workdir = shutil.copytree(retrieval_workdir, tmp_path / "corrupt")
    data = max((p for p in (workdir / "best").rglob("*") if p.is_file()
                and "state" in p.parts), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="corrupt: .* does not match its SHA-256"):
        export_workdir(workdir, tmp_path / "out")


@pytest.mark.parametrize("kwargs, message", [
    ({"platforms": ["cpu", "gpu"]}, "--platforms cpu,gpu"),
    ({"items_dtype": "float16"}, "--items-dtype float16"),
])
def test_export_refuses_bad_options_before_loading_anything(tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_workdir(tmp_path / "no-such-workdir", tmp_path / "out", **kwargs)


def test_export_refuses_a_non_empty_out_directory(retrieval_bundle, retrieval_workdir):
    with pytest.raises(ExportError, match="exists and is not an empty directory"):
        export_workdir(retrieval_workdir, retrieval_bundle)


def test_padded_table_rows_of_a_sharded_run_are_dropped_other_differences_refused():
    want = {"tables": {"item": {"embedding": jax.ShapeDtypeStruct((5, 4), np.float32)}},
            "dense": {"kernel": jax.ShapeDtypeStruct((4, 4), np.float32)}}
    padded = {"tables": {"item": {"embedding": np.ones((8, 4), np.float32)}},
              "dense": {"kernel": np.ones((4, 4), np.float32)}}
    assert match_params(padded, want, "ckpt")["tables"]["item"]["embedding"].shape == (5, 4)
    padded["dense"]["kernel"] = np.ones((6, 4), np.float32)
    with pytest.raises(ExportError, match=r"dense/kernel: checkpoint \(6, 4\), config \(4, 4\)"):
        match_params(padded, want, "ckpt")
    with pytest.raises(ExportError, match="dense/kernel: in the config's model, not in the"):
        match_params({"tables": padded["tables"]}, want, "ckpt")
