"""The synthetic generator: deterministic, readable by the JDsearch reader, and carrying the
planted structure (user category preferences, query → category, shared clock, funnel)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onepiece_jax.data.readers import read_dataset
from onepiece_jax.data.readers.synthetic import (
    BEHAVIOR_FILE,
    META_FILE,
    SynthConfig,
    generate_synthetic,
    simulate_requests,
    world_arguments,
)


@pytest.fixture(scope="module")
def log(synthetic_dir):
    return read_dataset("jdsearch", synthetic_dir)


def test_a_world_is_labelled_synthetic_so_protocol_strings_do_not_claim_jdsearch(log, tmp_path,
                                                                                synthetic_dir):
    assert log.dataset == "synthetic (JDsearch format)"
    for name in (BEHAVIOR_FILE, META_FILE):  # the same files without the generator's record
        (tmp_path / name).write_bytes((synthetic_dir / name).read_bytes())
    assert read_dataset("jdsearch", tmp_path).dataset == "jdsearch"


def test_deterministic_by_seed(tmp_path, synthetic_dir):
    again = generate_synthetic(tmp_path / "a", num_users=300, num_items=2000, seed=7)
    other = generate_synthetic(tmp_path / "b", num_users=300, num_items=2000, seed=8)
    for name in (BEHAVIOR_FILE, META_FILE):
        assert (again / name).read_bytes() == (synthetic_dir / name).read_bytes()
        assert (other / name).read_bytes() != (synthetic_dir / name).read_bytes()


def test_a_world_records_the_arguments_that_replay_it(tmp_path):
    cfg = SynthConfig(category_fanout=(3, 3, 2, 2), query_intent=False)
    world = generate_synthetic(tmp_path, num_users=120, num_items=1500, seed=4, config=cfg,
                               chunk_users=50)
    args = world_arguments(world)
    assert args == {"num_users": 120, "num_items": 1500, "seed": 4, "config": cfg,
                    "chunk_users": 50}
    stored = json.loads((world / "synth.json").read_text())
    assert stored["knobs"] == {"category_fanout": [3, 3, 2, 2], "query_intent": False}
    label = np.concatenate([p["label"] for p in simulate_requests(**args)])
    np.testing.assert_array_equal(label, read_dataset("jdsearch", world).requests.cand_label)
    (world / "synth.json").write_text(json.dumps({**stored, "knobs": {"warp": 9}}))
    with pytest.raises(ValueError, match="unknown synthetic knobs \\['warp'\\]"):
        world_arguments(world)
    with pytest.raises(FileNotFoundError, match="not a world"):
        world_arguments(tmp_path / "elsewhere")


def test_reads_back_as_jdsearch(log):
    assert log.num_users == 300 and len(log.requests) == 300 and log.num_items == 2000
    assert np.bincount(log.user, minlength=301)[1:].min() >= 1  # every user has a history
    assert set(log.raw_behavior_counts) == {"CLICK", "CART", "FLW", "ORD"}
    assert all(n > 0 for n in log.raw_behavior_counts.values())
    assert log.num_queries > 0 and (log.query == 0).any() and (log.query > 0).any()
    assert (log.requests.query > 0).all()
    assert set(log.skipped) <= {"query_terms_truncated"}
    assert set(log.item_features) == {"item_id", "brand", "cate_1", "cate_2", "cate_3",
                                      "cate_4", "shop"}
    assert (log.item_features["brand"].values[1:, 0] == 0).mean() < 0.1  # ~2% missing brands


def test_shared_clock_and_requests_after_history(log):
    cfg = SynthConfig()
    first = np.array([log.time[log.user == u].min() for u in range(1, 11)])
    assert (first >= cfg.epoch).all() and np.ptp(first) > 86_400  # absolute, staggered starts
    last = np.zeros(log.num_users + 1, np.int64)
    np.maximum.at(last, log.user, log.time)
    assert (log.requests.time >= last[log.requests.user]).all()


def _click_lift(log, cand_user: np.ndarray) -> float:
    """Click rate of candidates whose leaf category is in ``cand_user``'s history, over the
    click rate of the other candidates."""
    leaf = log.item_features["cate_4"].values[:, 0]
    seen = np.zeros((log.num_users + 1, leaf.max() + 1), bool)
    seen[log.user, leaf[log.item]] = True
    match = seen[cand_user, leaf[log.requests.cand_item]]
    clicked = log.requests.cand_label >= 1
    return clicked[match].mean() / clicked[~match].mean()


def test_planted_user_preference(log):
    """Candidates in a category of the user's history are clicked far more often; with the
    histories of other users (a shuffled control) the lift disappears."""
    r = log.requests
    cand_user = np.repeat(r.user, np.diff(r.offsets))
    other = np.concatenate([[0], np.roll(np.arange(1, log.num_users + 1), 1)])
    assert _click_lift(log, cand_user) > 2.5
    assert _click_lift(log, other[cand_user]) < 1.6


def _query_leaf_share(log) -> float:
    """Share of query-carrying events whose leaf is the most common leaf of their query."""
    leaf = log.item_features["cate_4"].values[:, 0]
    with_query = log.query > 0
    pairs = np.unique(np.stack([log.query[with_query], leaf[log.item[with_query]]]), axis=1,
                      return_counts=True)
    top = np.zeros(log.num_queries + 1, np.int64)
    np.maximum.at(top, pairs[0][0], pairs[1])
    return top.sum() / with_query.sum()


def test_planted_query_category(log):
    """A query's terms pin down the category: most events under a query share one leaf."""
    share = _query_leaf_share(log)
    assert share > 0.5 and share > 10 / SynthConfig().num_leaves


def test_query_intent_switch_removes_the_query_category_link(log, tmp_path):
    """Control world: queries name random leaves, so a query no longer pins its events' leaf,
    while the user-preference signal is untouched."""
    path = generate_synthetic(tmp_path, num_users=300, num_items=2000, seed=7,
                              config=SynthConfig(query_intent=False))
    control = read_dataset("jdsearch", path)
    assert _query_leaf_share(log) > 0.8 and _query_leaf_share(control) < 0.5  # small-count floor
    r = control.requests
    assert _click_lift(control, np.repeat(r.user, np.diff(r.offsets))) > 2.5


def test_funnel_is_a_funnel(log):
    counts = np.bincount(log.requests.cand_label, minlength=4)
    assert counts[0] > counts[1] > 0 and counts[1] > counts[3] > 0


def test_rejects_too_few_items(tmp_path):
    with pytest.raises(ValueError, match="num_items"):
        generate_synthetic(tmp_path, num_users=5, num_items=10, seed=0)


def _activity_time_correlation(log) -> float:
    """Pearson correlation of a request's time with its user's number of history events."""
    events = np.bincount(log.user, minlength=log.num_users + 1)[log.requests.user]
    return float(np.corrcoef(log.requests.time, events)[0, 1])


def test_end_aligned_switch_makes_request_time_independent_of_activity(log, tmp_path):
    """By default active users search last, so a time split is a split by history length; with
    ``end_aligned`` every last search lands in the second half of the horizon whatever the
    user's activity, still after the user's history."""
    path = generate_synthetic(tmp_path, num_users=300, num_items=2000, seed=7,
                              config=SynthConfig(end_aligned=True))
    aligned = read_dataset("jdsearch", path)
    assert _activity_time_correlation(log) > 0.4
    assert abs(_activity_time_correlation(aligned)) < 0.15
    cfg = SynthConfig()
    assert (aligned.requests.time >= cfg.epoch + cfg.horizon * (1 - cfg.start_spread)).all()
    last = np.zeros(aligned.num_users + 1, np.int64)
    np.maximum.at(last, aligned.user, aligned.time)
    assert (aligned.requests.time >= last[aligned.requests.user]).all()


def test_knob_overrides_parse_literals_and_name_bad_knobs():
    cfg = SynthConfig.from_overrides(["end_aligned=True", "explore_rate=0", "candidates=10"])
    assert cfg.end_aligned and cfg.explore_rate == 0.0 and cfg.candidates == 10
    with pytest.raises(ValueError, match="did you mean 'end_aligned'"):
        SynthConfig.from_overrides(["end_align=True"])
    with pytest.raises(ValueError, match="candidates: expected a number, got 'ten'"):
        SynthConfig.from_overrides(["candidates=ten"])
    with pytest.raises(ValueError, match="query_intent: expected a bool"):
        SynthConfig.from_overrides(["query_intent=maybe"])
