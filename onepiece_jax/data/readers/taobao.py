"""Taobao UserBehavior reader (``user_id,item_id,category_id,behavior,timestamp``, no header).

Funnel (weak → strong): ``pv`` → ``cart/fav`` → ``buy``; "cart" and "fav" (add to cart, add to
favourites) are both level 2, and ``raw_behavior_counts`` keeps pv / cart / fav / buy apart.
Item feature ``category``. An item is listed under one category; if rows disagree the last row
wins and every extra (item, category) pair is counted in ``skipped["item_category_conflicts"]``.
Every row is kept (repeated rows are real repeated views).

The full file has ~100M rows, so it is parsed in chunks of lines into numpy columns; only the
final id encoding (np.unique) sees whole columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onepiece_jax.data.events import EventLog, identity_table
from onepiece_jax.data.readers import _common as c

BEHAVIORS = ("pv", "cart/fav", "buy")
SOURCE_BEHAVIORS = (b"pv", b"cart", b"fav", b"buy")  # raw names, in raw-code order
LEVEL_OF_SOURCE = np.array([1, 2, 2, 3], np.int8)


def read_taobao(path: str | Path) -> EventLog:
    """Streams the UserBehavior CSV into an EventLog."""
    csv = c.require_file(Path(path), "UserBehavior CSV")
    skipped: dict[str, int] = {}
    codes = {name: i for i, name in enumerate(SOURCE_BEHAVIORS)}
    cols: list[list[np.ndarray]] = [[], [], [], [], []]
    for nums, t in c.iter_columns(csv, b",", 5, skipped):
        cols[0].append(c.narrow(c.to_int(t[:, 0], nums, csv, "user_id")))
        cols[1].append(c.narrow(c.to_int(t[:, 1], nums, csv, "item_id")))
        cols[2].append(c.narrow(c.to_int(t[:, 2], nums, csv, "category_id")))
        cols[3].append(c.lookup(np.char.strip(t[:, 3]), codes, nums, csv, "behavior")
                       .astype(np.int8))
        cols[4].append(c.to_int(t[:, 4], nums, csv, "timestamp"))
    user_raw, item_raw, cat_raw = (np.concatenate(p) for p in cols[:3])
    source, time = np.concatenate(cols[3]), np.concatenate(cols[4])
    del cols
    user_vocab, item_vocab = c.sorted_vocab(user_raw), c.sorted_vocab(item_raw)
    item = c.dense(item_vocab, item_raw)
    del item_raw
    stride = int(cat_raw.max()) - int(cat_raw.min()) + 1
    pairs = np.unique(item.astype(np.int64) * stride + (cat_raw - cat_raw.min()))
    c.bump(skipped, "item_category_conflicts", pairs.size - np.unique(pairs // stride).size)
    return c.build_log(
        dataset="taobao", user=c.dense(user_vocab, user_raw), item=item, time=time,
        behavior=LEVEL_OF_SOURCE[source], query=None, behaviors=BEHAVIORS, has_timestamps=True,
        item_features={"item_id": identity_table(item_vocab.size),
                       "category": c.entity_table(item_vocab.size, item, cat_raw)},
        user_features={"user_id": identity_table(user_vocab.size)},
        item_ids=c.with_padding_row(item_vocab), user_ids=c.with_padding_row(user_vocab),
        skipped=skipped,
        raw_behavior_counts=c.count_by_name(source, [n.decode() for n in SOURCE_BEHAVIORS]))
