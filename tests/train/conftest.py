"""A tiny planted dataset and config shared by the training tests (one build per session)."""

import numpy as np
import pytest

from onepiece_jax.config import base_config
from onepiece_jax.data.events import EventLog, FeatureTable, identity_table

DAY = 86400


def planted_log(users: int = 120, items: int = 150, length: int = 14, seed: int = 0,
                clusters: int = 5) -> EventLog:
    """Users belong to one of ``clusters`` tastes (user id mod clusters) and only consume items of
    their cluster (item id mod clusters), in random order; the category feature is the cluster.
    Reading the history (or its categories) narrows 150 items to 30; popularity cannot."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, users + 1):
        pool = np.arange(1, items + 1)[np.arange(1, items + 1) % clusters == u % clusters]
        t0 = rng.integers(0, 20 * DAY)
        for j, item in enumerate(rng.choice(pool, size=length, replace=False)):
            rows.append((u, item, t0 + j * 3600, 1 + (j % 3 == 0)))
    user, item, time, beh = (np.array(c) for c in zip(*rows, strict=True))
    cat = FeatureTable(((np.arange(items + 1) % clusters) + 1)[:, None].astype(np.int32),
                       clusters + 1)
    cat.values[0] = 0
    return EventLog(dataset="planted", user=user.astype(np.int32), item=item.astype(np.int32),
                    time=time.astype(np.int64), behavior=beh.astype(np.int8),
                    query=np.zeros(len(rows), np.int32), behaviors=("view", "like"),
                    has_timestamps=True,
                    item_features={"item_id": identity_table(items), "category": cat},
                    user_features={"user_id": identity_table(users)},
                    # the source's ids, as a reader keeps them: numbers for items, text for users
                    item_ids=np.r_[0, 1000 + 7 * np.arange(1, items + 1)],
                    user_ids=np.array(["", *(f"u{u}" for u in range(1, users + 1))]))


def tiny_config(build_dir: str):
    c = base_config()
    c.dataset.name = "planted"
    c.dataset.build_dir = build_dir
    c.tasks = ("window", "next")
    c.context.ih_max_len = 8
    c.context.pa_groups = ("like",)
    c.context.pa_group_size = 4
    c.context.pool_window = 3
    c.model.update(d_model=32, num_layers=1, num_heads=2, feature_dim=8, head_hidden=16,
                   dropout=0.0, reasoning_steps=2)
    c.loss.negatives.update(uniform=8, popular=4, same_category=2)
    c.train.update(batch_size=64, epochs=6, learning_rate=3e-3, warmup_steps=10,
                   log_every_steps=1000, early_stop_patience=100)
    c.eval.update(batch_size=64, item_chunk=64)
    return c


@pytest.fixture(scope="session")
def planted_build(tmp_path_factory):
    from onepiece_jax.train.loop import ensure_built

    out = tmp_path_factory.mktemp("planted_build")
    return ensure_built(tiny_config(str(out)), out, log=planted_log())


def planted_ranking_log(seed: int = 0) -> EventLog:
    """The clustered log plus one request per user (after its history): 24 candidates, half from
    the user's cluster; in-cluster candidates are clicked (and some carted), the rest are not."""
    from onepiece_jax.data.events import Requests

    log = planted_log(seed=seed)
    rng = np.random.default_rng(seed + 1)
    users = log.num_users
    items = np.arange(1, log.num_items + 1)
    cand, lab = [], []
    for u in range(1, users + 1):
        mine = rng.choice(items[items % 5 == u % 5], 12, replace=False)
        other = rng.choice(items[items % 5 != u % 5], 12, replace=False)
        cand.append(np.concatenate([mine, other]))
        lab.append(np.concatenate([1 + (rng.random(12) < 0.3), np.zeros(12)]).astype(np.int8))
    last = np.array([log.time[log.user == u].max() for u in range(1, users + 1)])
    log.requests = Requests(user=np.arange(1, users + 1, dtype=np.int32),
                            time=(last + 3600).astype(np.int64),
                            query=np.zeros(users, np.int32),
                            offsets=np.arange(0, 24 * (users + 1), 24, dtype=np.int64),
                            cand_item=np.concatenate(cand).astype(np.int32),
                            cand_label=np.concatenate(lab))
    return log


def tiny_ranking_config(build_dir: str):
    c = tiny_config(build_dir)
    c.mode = "ranking"
    c.tasks = ("view", "like")
    c.context.num_candidates = 6
    c.context.max_candidates = 24
    c.context.val_fraction = 0.2
    c.context.test_fraction = 0.2
    c.train.update(batch_size=32, epochs=15, early_stop_metric="view/AUC")
    return c
