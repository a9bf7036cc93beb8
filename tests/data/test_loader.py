"""TFDS build round trip and the resumable fixed-shape batch iterator."""

import json
import tempfile

import numpy as np
import pytest

from onepiece_jax.data.context import ContextBuilder, ContextConfig
from onepiece_jax.data.loader import BatchIterator, BuiltDataset, group_candidates
from onepiece_jax.data.tfds_builder import build
from tests.data.test_context import make_log


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    log = make_log()
    cfg = ContextConfig(ih_max_len=6, pa_groups=("buy", "view"), pa_group_size=3, pool_window=3)
    summary = build(log, cfg, out)
    return out, log, cfg, summary


def test_build_writes_every_split_with_the_builder_examples(built):
    out, log, cfg, summary = built
    ds = BuiltDataset.open(out)
    b = ContextBuilder(log, cfg)
    for split in ("train", "validation", "test"):
        expected = {key: ex for key, ex in b.examples(split)}
        arrays = ds.load_split(split)
        assert summary["examples"][split] == len(expected) == arrays["user"].shape[0]
        got = sorted(zip(arrays["user"], arrays["time"], arrays["target"], strict=True))
        want = sorted((e["user"], e["time"], e["target"]) for e in expected.values())
        assert got == want
        example = next(iter(expected.values()))  # the stored dtypes, scalars included
        assert {k: arrays[k].dtype for k in arrays} == {k: np.asarray(v).dtype
                                                        for k, v in example.items()}
    assert json.loads((out / "features.json").read_text())["pa_groups"] == ["buy", "view"]
    assert ds.catalog["item"]["category"].shape == (log.num_items + 1, 1)
    assert ds.item_count.sum() == b.train_mask.sum()


def test_build_keeps_the_readers_raw_ids_and_a_log_with_the_wrong_count_is_refused(tmp_path):
    log = make_log(users=10, items=12, events=100)
    log.item_ids = np.r_[0, np.arange(500, 512)]
    log.user_ids = np.array(["", *"abcdefghij"])
    build(log, ContextConfig(ih_max_len=4, pool_window=2), tmp_path / "b")
    with np.load(tmp_path / "b" / "raw_ids.npz") as npz:
        assert sorted(npz.files) == ["item", "user"]
        np.testing.assert_array_equal(npz["item"], log.item_ids)
        np.testing.assert_array_equal(npz["user"], log.user_ids)
    log.item_ids = log.item_ids[:-1]
    with pytest.raises(ValueError, match=r"toy: item_ids has shape \(12,\), want \(13,\)"):
        log.validate()


def test_iterator_is_fixed_shape_and_resumes_exactly(built):
    out, *_ = built
    arrays = BuiltDataset.open(out).load_split("train")
    it = BatchIterator(arrays, 16, shuffle=True, seed=3)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = list(it)
    assert all(b["ih_item"].shape == (16, 6) for b in first + rest)
    full = 16 * (len(first) + len(rest) - 1)
    assert rest[-1]["example_mask"].sum() == arrays["user"].shape[0] - full
    again = BatchIterator(arrays, 16, shuffle=True, seed=3)
    again.set_state(state)
    for a, b in zip(list(again), rest, strict=True):
        np.testing.assert_array_equal(a["ih_item"], b["ih_item"])
    it.next_epoch()
    assert not np.array_equal(next(it)["user"], first[0]["user"])  # reshuffled per epoch


def test_candidate_groups_cover_every_real_candidate_once():
    rng = np.random.default_rng(0)
    cis = np.zeros((3, 8), np.int32)
    cis[0, :5] = [1, 2, 3, 4, 5]
    cis[1, :8] = np.arange(10, 18)
    cis[2, :1] = [30]
    labels = (cis[..., None] % 2).astype(np.float32)
    arrays = {"cis_item": cis, "cis_label": labels, "user": np.array([1, 2, 3], np.int32)}
    groups = group_candidates(arrays, 4, rng)
    assert groups["cis_item"].shape[1] == 4
    for u in (1, 2, 3):
        got = groups["cis_item"][groups["user"] == u]
        np.testing.assert_array_equal(np.sort(got[got > 0]), np.sort(cis[u - 1][cis[u - 1] > 0]))
    np.testing.assert_array_equal(groups["cis_label"][..., 0], groups["cis_item"] % 2)
    assert groups["user"].tolist().count(1) == 2  # 5 candidates → 2 groups of 4


def test_build_summary_counts_users_too_short_for_leave_one_out(tmp_path):
    log = make_log(users=40, events=400)
    short = 40  # give the last user exactly two events: kept out of LOO, and counted
    keep = (log.user != short)
    idx = np.flatnonzero(log.user == short)[:2]
    keep[idx] = True
    for name in ("user", "item", "time", "behavior", "query"):
        setattr(log, name, getattr(log, name)[keep])
    summary = build(log, ContextConfig(ih_max_len=4, pool_window=2), tmp_path / "b")
    assert summary["skipped"]["users_with_fewer_than_3_events"] >= 1


def test_build_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    build(make_log(users=10, events=100), ContextConfig(ih_max_len=4, pool_window=2),
          tmp_path / "b")
    assert list(scratch.iterdir()) == []


def test_a_record_with_the_wrong_number_of_values_names_the_build_and_feature(built):
    from tensorflow_datasets.proto import tf_example_pb2

    from onepiece_jax.data.loader import _decode_records

    out, *_ = built
    records = BuiltDataset.open(out).records("train")
    good = records.source.__getitems__([0])[0]
    example = tf_example_pb2.Example.FromString(good)
    del example.features.feature["ih_item"].int64_list.value[-1]  # one value short
    with pytest.raises(ValueError, match=r"B \(train\): feature 'ih_item': the records do not"):
        _decode_records([good, example.SerializeToString()], records.features, "B (train)")


def test_exclude_lists_pad_to_a_power_of_two_so_validation_and_test_shapes_agree(built):
    """Each split's longest history differs by about one item; padded to the next power of two,
    the evaluation functions see one shape and compile once per run."""
    out, log, cfg, _ = built
    ds = BuiltDataset.open(out)
    b = ContextBuilder(log, cfg)
    widths = {}
    for split in ("validation", "test"):
        longest = max(len(ex["exclude"]) for _, ex in b.examples(split))
        exclude = ds.load_split(split)["exclude"]
        widths[split] = exclude.shape[1]
        assert widths[split] & (widths[split] - 1) == 0  # a power of two
        assert widths[split] >= longest > widths[split] // 2
        assert sorted(int(n) for n in (exclude > 0).sum(1)) == sorted(
            int((ex["exclude"] > 0).sum()) for _, ex in b.examples(split))
    assert widths["validation"] == widths["test"]
    assert longest & (longest - 1), "the fixture's longest history should not be a power of 2"
    assert ds.load_split("test", exclude_max=2)["exclude"].shape[1] == 2
