"""Context engineering: IH/PA/SD/CIS shapes, leave-one-out splits and leak-free anchors."""

import numpy as np
import pytest

from onepiece_jax.data.anchors import top_items
from onepiece_jax.data.context import ContextBuilder, ContextConfig, sessions_to_requests
from onepiece_jax.data.events import EventLog, FeatureTable, Requests, identity_table

DAY = 86400


def make_log(seed=0, users=30, items=40, events=600, *, future_star=None, timestamps=True,
             requests=False):
    rng = np.random.default_rng(seed)
    user = rng.integers(1, users + 1, events).astype(np.int32)
    user[:users] = np.arange(1, users + 1)  # every user present
    item = rng.integers(1, items + 1, events).astype(np.int32)
    time = rng.integers(0, 30 * DAY, events).astype(np.int64)
    if future_star is not None:  # a blockbuster that only exists after day 20
        star_time, star_item = future_star
        late = time >= star_time
        item[late & (rng.random(events) < 0.7)] = star_item
        item[(~late) & (item == star_item)] = 1
    behavior = rng.integers(1, 4, events).astype(np.int8)
    cat = FeatureTable(rng.integers(1, 5, (items + 1, 1)).astype(np.int32), vocab_size=5)
    cat.values[0] = 0
    log = EventLog(
        dataset="toy", user=user, item=item,
        time=time if timestamps else np.zeros(events, np.int64),
        behavior=behavior, query=np.zeros(events, np.int32),
        behaviors=("view", "like", "buy"), has_timestamps=timestamps,
        item_features={"item_id": identity_table(items), "category": cat},
        user_features={"user_id": identity_table(users)})
    if not timestamps:
        order = np.lexsort((np.arange(events), log.user))
        log.time[order] = np.concatenate([np.arange(c) for c in np.bincount(user)[1:]])
    if requests:
        log.requests = Requests(
            user=np.arange(1, 11, dtype=np.int32),
            time=np.linspace(DAY, 29 * DAY, 10).astype(np.int64),
            query=np.zeros(10, np.int32), offsets=np.arange(0, 11 * 7, 7, dtype=np.int64),
            cand_item=rng.integers(1, items + 1, 70).astype(np.int32),
            cand_label=rng.integers(0, 4, 70).astype(np.int8))
    log.validate()
    return log


def test_history_is_deduplicated_newest_last_left_padded():
    b = ContextBuilder(make_log(), ContextConfig(ih_max_len=5))
    items = np.array([3, 1, 3, 2, 7], np.int32)
    behs = np.array([1, 1, 2, 1, 3], np.int32)
    ih, beh = b.history(items, behs)
    np.testing.assert_array_equal(ih, [0, 1, 3, 2, 7])  # 3 kept at its latest position
    np.testing.assert_array_equal(beh, [0, 1, 2, 1, 3])
    ih, _ = b.history(np.arange(1, 9, dtype=np.int32), np.ones(8, np.int32))
    np.testing.assert_array_equal(ih, [4, 5, 6, 7, 8])  # truncated to the newest L


def test_leave_one_out_splits_hold_last_two_events_per_user():
    log = make_log()
    b = ContextBuilder(log, ContextConfig(ih_max_len=8, pool_window=3))
    tests = {ex["user"]: ex for _, ex in b.examples("test")}
    vals = {ex["user"]: ex for _, ex in b.examples("validation")}
    train = list(b.examples("train"))
    for u in range(1, 31):
        sl = b._user_slice(u)
        seq = b.item[sl]
        if seq.size < 3:
            assert u not in tests
            continue
        assert tests[u]["target"] == seq[-1] and vals[u]["target"] == seq[-2]
        assert set(tests[u]["exclude"]) == set(seq[:-1])
    for key, ex in train:
        assert ex["pool_label"].shape == (3, 2)
        assert ex["pool_label"][0, 1] == 1.0  # 'next' task: only the exact next item
        assert ex["pool_label"][1:, 1].sum() == 0
        # the pool is the next events up to, never into, the user's validation/test events
        user, t = (int(x) for x in key.split("-"))
        seq = b.item[b._user_slice(user)]
        want = seq[t:min(t + 3, seq.size - 2)]
        np.testing.assert_array_equal(ex["pool_item"][:want.size], want)
        assert (ex["pool_item"][want.size:] == 0).all() and ex["target"] == seq[t]
    n_train_targets = sum(max(np.diff(b.user_start)[u] - 3, 0) for u in range(1, 31))
    assert len(train) == n_train_targets


def test_retrieval_behaviour_tasks_label_each_pool_item_by_its_own_level():
    """The ratings-funnel curriculum (watched → rated ≥ 4): a pool item is positive for a
    behaviour task when its own event reaches that level, whatever its place in the window."""
    b = ContextBuilder(make_log(), ContextConfig(ih_max_len=8, pool_window=3,
                                                 tasks=("view", "like")))
    seen = 0
    for key, ex in b.examples("train"):
        user, t = (int(x) for x in key.split("-"))
        sl = b._user_slice(user)
        levels = b.behavior[sl][t:min(t + 3, sl.stop - sl.start - 2)]
        want = np.zeros((3, 2), np.float32)
        want[:levels.size, 0] = 1.0  # 'view': every event of the window
        want[:levels.size, 1] = levels >= 2  # 'like': the events liked or bought
        np.testing.assert_array_equal(ex["pool_label"], want)
        seen += int(0 < want[:, 1].sum() < levels.size)
    assert seen > 0  # some windows mix liked and unliked items
    plain = ContextBuilder(b.log, ContextConfig(ih_max_len=8, pool_window=3))
    tests = list(b.examples("test"))  # evaluation keeps every next item whatever its level
    assert [k for k, _ in tests] == [k for k, _ in plain.examples("test")]
    for _, ex in tests:
        assert ex["target"] == ex["pool_item"][0]


def test_train_fraction_keeps_a_nested_user_subset_of_training_examples_only():
    log = make_log(users=300, events=6000)
    full = ContextBuilder(log, ContextConfig(ih_max_len=4))
    train_users = {}
    for fraction in (0.25, 0.5, 1.0):
        b = ContextBuilder(log, ContextConfig(ih_max_len=4, train_fraction=fraction))
        train_users[fraction] = {int(ex["user"]) for _, ex in b.examples("train")}
        for split in ("validation", "test"):  # evaluation stays whole
            assert [k for k, _ in b.examples(split)] == [k for k, _ in full.examples(split)]
    assert train_users[0.25] < train_users[0.5] < train_users[1.0]
    assert 0.15 < len(train_users[0.25]) / len(train_users[1.0]) < 0.35
    with pytest.raises(ValueError, match="train_fraction"):
        ContextBuilder(log, ContextConfig(train_fraction=0.0))


@pytest.mark.parametrize("key", ["global"])
def test_anchors_never_come_from_the_future(key):
    star, star_time = 40, 20 * DAY
    log = make_log(seed=1, events=3000, future_star=(star_time, star))
    cfg = ContextConfig(ih_max_len=6, pa_groups=("buy", "like", "view"), pa_group_size=5,
                        pa_key=key, pa_window_seconds=5 * DAY, pa_bucket_seconds=DAY)
    b = ContextBuilder(log, cfg)
    seen_star_after = False
    for split in ("train", "validation", "test"):
        for _, ex in b.examples(split):
            t = int(ex["time"])
            for g, level in enumerate((3, 2, 1)):
                anchors = ex["pa_item"][g][ex["pa_item"][g] > 0]
                earlier = (b.time < t) & (b.behavior >= level)
                # brute force: the top-k of the window that ends at the day start before t
                end = (t // DAY) * DAY
                window = (b.time >= end - 5 * DAY) & (b.time < end) & (b.behavior >= level)
                np.testing.assert_array_equal(anchors, top_items(b.item[window], 5))
                assert np.isin(anchors, b.item[earlier]).all()
                if t < star_time:
                    assert star not in anchors
                elif t >= star_time + 2 * DAY and g == 2:
                    seen_star_after |= star in anchors
    assert seen_star_after  # the blockbuster does become an anchor once it is in the past


def test_anchors_without_timestamps_use_training_events_only():
    log = make_log(timestamps=False)
    b = ContextBuilder(log, ContextConfig(pa_groups=("view",), pa_group_size=4))
    expected = top_items(b.item[b.train_mask], 4)
    for split in ("train", "test"):
        for _, ex in b.examples(split):
            np.testing.assert_array_equal(ex["pa_item"][0], expected)


def test_ranking_examples_carry_labels_per_task_and_history_before_request():
    log = make_log(requests=True)
    cfg = ContextConfig(mode="ranking", tasks=("view", "like", "buy"), max_candidates=12,
                        ih_max_len=10)
    b = ContextBuilder(log, cfg)
    n = 0
    for split in ("train", "validation", "test"):
        for _, ex in b.examples(split):
            n += 1
            r = ex["request"] - 1
            lab = log.requests.cand_label[log.requests.offsets[r]:log.requests.offsets[r + 1]]
            np.testing.assert_array_equal(ex["cis_label"][:7, 2], (lab >= 3).astype(np.float32))
            assert ex["cis_label"][7:].sum() == 0 and (ex["cis_item"][7:] == 0).all()
            sl = b._user_slice(int(ex["user"]))
            before = set(b.item[sl][b.time[sl] < ex["time"]])
            assert set(ex["ih_item"][ex["ih_item"] > 0]) <= before
    assert n == 10


def test_unknown_task_is_rejected_naming_the_key():
    with pytest.raises(ValueError, match="tasks.*'cart'"):
        ContextBuilder(make_log(), ContextConfig(tasks=("cart",)))
    with pytest.raises(ValueError, match="pa_groups"):
        ContextBuilder(make_log(), ContextConfig(pa_groups=("nope",)))


def test_sessions_become_requests_with_history_from_earlier_sessions():
    log = make_log(seed=3)
    req = sessions_to_requests(log, session_seconds=DAY, negatives=5, seed=0)
    assert len(req) > 0
    for r in range(len(req)):
        cands = req.cand_item[req.offsets[r]:req.offsets[r + 1]]
        assert np.unique(cands).size == cands.size
        assert (req.cand_label[req.offsets[r]:req.offsets[r + 1]] > 0).any()
