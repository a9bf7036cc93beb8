"""Atomic writes and JSON reads of the files whose presence marks a finished step."""

import hashlib
import json
import os

import pytest

from onepiece_jax import files


def test_an_interrupted_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    files.write_json(path, {"NDCG@10": 0.1})

    def killed(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(OSError, match="disk full"):
        files.write_json(path, {"NDCG@10": 0.2})
    assert json.loads(path.read_text()) == {"NDCG@10": 0.1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_hard_linked_copy_keeps_its_version_when_the_original_is_rewritten(tmp_path):
    original, copy = tmp_path / "a.json", tmp_path / "b.json"
    files.write_json(original, [1])
    os.link(original, copy)
    files.write_atomic(original, "[2]", sync=True)
    assert json.loads(original.read_text()) == [2] and json.loads(copy.read_text()) == [1]


def test_a_file_that_is_not_json_is_named_in_the_error(tmp_path):
    path = tmp_path / "experiment.json"
    path.write_text('{"status": "do')
    with pytest.raises(ValueError, match=f"run record {path} is not valid JSON"):
        files.read_json(path, "run record")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="experiment.json is not valid JSON"):
        files.read_json(path)


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "weights.npz"
    data = os.urandom(3 << 20)  # several read chunks
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_a_files_content_id_counts_the_companions_that_share_its_stem(tmp_path):
    inter = tmp_path / "shop.inter"
    inter.write_text("user_id:token\titem_id:token\n1\t2\n")
    alone = files.content_id(inter)
    (tmp_path / "shop.item").write_text("item_id:token\n2\n")  # RecBole's catalogue beside it
    with_items = files.content_id(inter)
    assert alone.startswith("sha256:") and with_items != alone
    (tmp_path / "other.inter").write_text("x")  # another dataset in the same folder
    (tmp_path / ".shop.inter.swp").write_text("x")
    assert files.content_id(inter) == with_items
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("shop.inter", "shop.item"):
        (moved / name).write_bytes((tmp_path / name).read_bytes())
    assert files.content_id(moved / "shop.inter") == with_items
    assert files.content_id("") is None and files.content_id(tmp_path / "missing") is None
