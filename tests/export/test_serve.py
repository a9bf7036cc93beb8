"""The standalone runtime: loads only with numpy + jax, checks files, vocabularies and batches."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from onepiece_jax.data.loader import BuiltDataset
from onepiece_jax.export import serve
from tests.export.conftest import copy_bundle, split_head


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "weights.npz").write_bytes((b / "weights.npz").read_bytes()[:-10] + b"0" * 10),
     "weights.npz does not match its SHA-256"),
    (lambda b: (b / "user_tower.jax").unlink(), "user_tower.jax is missing"),
    (lambda b: (b / "items.npy").write_bytes(b"short"), "items.npy has 5 bytes"),
    (lambda b: (b / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), "no manifest.json"),
])
def test_corrupted_bundle_is_refused_naming_the_file(retrieval_bundle, tmp_path, damage, message):
    bundle = copy_bundle(retrieval_bundle, tmp_path / "b")
    damage(bundle)
    with pytest.raises(serve.BundleError, match=message):
        serve.load_bundle(bundle)


def test_unreadable_artefact_with_a_matching_hash_is_refused(retrieval_bundle, tmp_path):
    """A replaced artefact whose manifest was updated too still fails, at deserialization."""
    bundle = copy_bundle(retrieval_bundle, tmp_path / "b")
    (bundle / "user_tower.jax").write_bytes(b"\0" * 64)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["user_tower.jax"] = serve.file_record(bundle / "user_tower.jax")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(serve.BundleError, match="user_tower.jax: cannot deserialize user_tower"):
        serve.load_bundle(bundle)


def test_vocabulary_hashes_accept_the_same_build_and_refuse_a_renumbered_one(
        retrieval_runtime, planted_build, tmp_path):
    bundle = retrieval_runtime
    bundle.check_vocabulary(planted_build)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(planted_build / "features.json", other)
    data = BuiltDataset.open(planted_build)
    tables = {f"{e}/{n}": v for e, t in data.catalog.items() for n, v in t.items()}
    tables["item/category"] = np.roll(tables["item/category"], 1, axis=0)  # categories renumbered
    np.savez(other / "catalog.npz", **tables)
    with pytest.raises(serve.BundleError, match=r"vocabulary mismatch .* item/category: bundle "
                                                r"vocab_size 6, sha256 \w+ vs data vocab_size 6"):
        bundle.check_vocabulary(other)
    spec = json.loads((planted_build / "features.json").read_text())
    spec["behaviors"] = ["like", "view"]
    (other / "features.json").write_text(json.dumps(spec))
    with pytest.raises(serve.BundleError, match=r"behaviors: bundle \['view', 'like'\] vs data"):
        bundle.check_vocabulary(other)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.pop("ih_item"), r"the batch has no 'ih_item' \(int32\[b, 8\]\)"),
    (lambda b: b.update(user=b["user"].astype(np.float32)), r"batch\['user'\] has dtype float32"),
    (lambda b: b.update(ih_item=b["ih_item"][:, :5]), r"batch\['ih_item'\] has shape \[5, 5\]"),
    (lambda b: b.update(user=b["user"][:3]), r"batch\['query'\] has 5 rows, other keys have 3"),
    (lambda b: b["ih_item"].__setitem__((2, 7), 151), r"holds 151 at \[2, 7\], outside the "
                                                       r"vocabulary 0..150"),
    (lambda b: b["context"].__setitem__((1, 2), 10), r"batch\['context'\] holds 10 at \[1, 2\], "
                                                     r"outside the vocabulary 0..9"),
])
def test_bad_batch_is_refused_naming_key_and_value(retrieval_runtime, retrieval_batch, edit,
                                                   message):
    batch = {k: v.copy() for k, v in retrieval_batch.items()}
    edit(batch)
    with pytest.raises(serve.BundleError, match=message):
        retrieval_runtime.run("user_tower", batch)


def test_int64_ids_from_the_pipeline_are_accepted(retrieval_runtime, retrieval_batch):
    wide = {k: v.astype(np.int64) for k, v in retrieval_batch.items() if v.dtype.kind == "i"}
    np.testing.assert_array_equal(retrieval_runtime.run("user_tower", wide),
                                  retrieval_runtime.run("user_tower", retrieval_batch))


def test_candidate_groups_cover_each_valid_candidate_once_in_groups_of_c():
    candidates = np.array([[5, 0, 7, 9, 4, 0, 3], [0, 0, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0]])
    request, slot = serve.candidate_groups(candidates, 3, np.random.default_rng(0))
    assert request.tolist() == [0, 0, 2]  # 5 valid → 2 groups, none → 0, 2 valid → 1
    for r in (0, 2):
        placed = slot[request == r]
        assert sorted(placed[placed >= 0].tolist()) == np.flatnonzero(candidates[r]).tolist()
    again = serve.candidate_groups(candidates, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(again[1], slot)


def test_rank_requests_scores_every_candidate_with_its_own_group(ranking_bundle,
                                                                 ranking_workdir):
    bundle = serve.load_bundle(ranking_bundle)
    batch = split_head(ranking_workdir, 3)
    candidates = np.zeros((3, 14), np.int32)
    candidates[:, :11] = np.arange(1, 34).reshape(3, 11)  # 11 real → groups of 6 and 5
    probs = bundle.rank_requests(batch, candidates, seed=4)
    assert probs.shape == (3, 14, 2)
    assert np.isfinite(probs[:, :11]).all() and np.isnan(probs[:, 11:]).all()
    request, slot = serve.candidate_groups(candidates, 6, np.random.default_rng(4))
    groups = {k: v[request] for k, v in batch.items()}
    groups["cis_item"] = np.where(slot >= 0, candidates[request[:, None], slot], 0)
    direct = bundle.run("ranker", groups)
    for g, r in enumerate(request):
        keep = slot[g] >= 0
        np.testing.assert_array_equal(probs[r, slot[g][keep]], direct[g][keep])


def test_raw_ids_map_a_pipelines_ids_in_and_the_index_answers_out(retrieval_runtime):
    ids, _ = retrieval_runtime.items()
    raw = retrieval_runtime.decode("item", ids)
    np.testing.assert_array_equal(raw, 1000 + 7 * ids)  # the planted log's item ids
    np.testing.assert_array_equal(retrieval_runtime.encode("item", raw[::-1]), ids[::-1])
    assert retrieval_runtime.encode("user", ["u12", "u3"]).tolist() == [12, 3]
    with pytest.raises(serve.BundleError, match="item id 1001 is not in the bundle's vocab"):
        retrieval_runtime.encode("item", [1007, 1001])
    assert retrieval_runtime.encode("item", [1007, 1001], unknown="zero").tolist() == [1, 0]
    with pytest.raises(serve.BundleError, match="raw item ids here are int64, got <U4"):
        retrieval_runtime.encode("item", ["1007"])
    with pytest.raises(serve.BundleError, match=r"dense item id 151 outside 0\.\.150"):
        retrieval_runtime.decode("item", [3, 151])
    with pytest.raises(serve.BundleError, match=r"no raw query ids .* kept \['item', 'user'\]"):
        retrieval_runtime.raw_ids("query")


def test_a_bundle_from_a_build_without_raw_ids_says_how_to_get_them(retrieval_runtime):
    older = dataclasses.replace(retrieval_runtime,  # as exported before builds kept raw ids
                                manifest={**retrieval_runtime.manifest, "raw_ids": None})
    with pytest.raises(serve.BundleError, match="no raw item ids .* build the dataset again"):
        older.encode("item", [1007])
