"""Amazon reader for the S3-Rec preparation (``NAME.txt`` + ``NAME_item2attributes.json``).

Each line of ``NAME.txt`` is ``user_id item_1 item_2 …`` in time order without timestamps, so
``has_timestamps`` is False and an event's time is its position in the user's line (0-based).
There is one behaviour, ``interact``. A user id on two lines is an error (the two orders could
not be merged).

Item features: ``attribute`` (multi-valued brand/category ids), width = the longest list but at
most ``max_attributes`` (default 8); longer lists keep their first values and are counted in
``skipped["attributes_truncated"]``. Items of the log without an attribute entry get none
(``skipped["items_without_attributes"]``). An attribute entry for an item the log never
mentions is counted in ``skipped["attribute_items_not_in_log"]`` and ignored: the file is
shared by several cuts of the data, so extra entries are expected, not corruption.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from onepiece_jax.data.events import DataError, EventLog, identity_table
from onepiece_jax.data.readers import _common as c

BEHAVIORS = ("interact",)
MAX_ATTRIBUTES = 8


def read_amazon(path: str | Path, *, max_attributes: int = MAX_ATTRIBUTES) -> EventLog:
    """Reads ``NAME.txt`` and the ``NAME_item2attributes.json`` beside it."""
    txt = c.require_file(Path(path), "S3-Rec interaction file")
    attr_path = c.require_file(txt.with_name(f"{txt.stem}_item2attributes.json"),
                               f"attribute file for {txt.name}")
    skipped: dict[str, int] = {}
    line_users, users, items, times = [], [], [], []
    line_nums = []
    for nums, lines in c.iter_line_chunks(txt, skipped):
        parts = [ln.split() for ln in lines]
        lens = np.fromiter(map(len, parts), np.int64, len(parts))
        short = np.flatnonzero(lens < 2)
        if short.size:
            raise DataError("expected a user id followed by at least one item id",
                            path=str(txt), line=int(nums[short[0]]))
        first = np.array([p[0] for p in parts])
        rest = np.array(list(itertools.chain.from_iterable(p[1:] for p in parts)))
        user = c.to_int(first, nums, txt, "user_id")
        n_items = lens - 1
        line_users.append(user)
        line_nums.append(nums)
        users.append(np.repeat(user, n_items))
        items.append(c.to_int(rest, np.repeat(nums, n_items), txt, "item_id"))
        starts = np.cumsum(n_items) - n_items
        times.append(np.arange(rest.size, dtype=np.int64) - np.repeat(starts, n_items))
    _check_unique_users(np.concatenate(line_users), np.concatenate(line_nums), txt)
    user_raw, item_raw = np.concatenate(users), np.concatenate(items)
    user_vocab, item_vocab = c.sorted_vocab(user_raw), c.sorted_vocab(item_raw)
    attr_ids, attr_len, attr_flat = _read_attributes(attr_path)
    in_log = np.isin(attr_ids, item_vocab)
    c.bump(skipped, "attribute_items_not_in_log", int((~in_log).sum()))
    c.bump(skipped, "items_without_attributes", np.setdiff1d(item_vocab, attr_ids).size)
    flat_keep = np.repeat(in_log, attr_len)
    attribute, truncated = c.ragged_table(item_vocab.size, c.dense(item_vocab, attr_ids[in_log]),
                                          attr_len[in_log], attr_flat[flat_keep], max_attributes)
    c.bump(skipped, "attributes_truncated", truncated)
    return c.build_log(
        dataset="amazon", user=c.dense(user_vocab, user_raw), item=c.dense(item_vocab, item_raw),
        time=np.concatenate(times), behavior=np.ones(user_raw.size, np.int8), query=None,
        behaviors=BEHAVIORS, has_timestamps=False,
        item_features={"item_id": identity_table(item_vocab.size), "attribute": attribute},
        user_features={"user_id": identity_table(user_vocab.size)},
        item_ids=c.with_padding_row(item_vocab), user_ids=c.with_padding_row(user_vocab),
        skipped=skipped, raw_behavior_counts={"interact": int(user_raw.size)})


def _check_unique_users(users: np.ndarray, nums: np.ndarray, path: Path) -> None:
    _, first = np.unique(users, return_index=True)
    if first.size != users.size:
        dup = np.setdiff1d(np.arange(users.size), first)[0]
        raise DataError(f"user {users[dup]} already has a line", path=str(path),
                        line=int(nums[dup]), field="user_id")


def _read_attributes(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item ids, attribute-list lengths and the concatenated attribute ids of the json file."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError("empty file", path=str(path), line=1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    if not isinstance(data, dict):
        raise DataError("expected an object {item_id: [attribute ids]}", path=str(path), line=1)
    ids, lens, flat = [], [], []
    def where(key: str) -> dict:
        """The file and the line of the key (json.loads keeps no positions; errors only)."""
        return {"path": str(path), "line": text.count("\n", 0, max(text.find(f'"{key}"'), 0)) + 1}

    for key, values in data.items():
        if not key.strip().lstrip("-").isdigit():
            raise DataError(f"item id {key!r} is not an integer", field="item_id", **where(key))
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DataError(f"attributes of item {key} must be a list of integers, got "
                            f"{values!r}", field="attributes", **where(key))
        ids.append(int(key))
        lens.append(len(values))
        flat.extend(values)
    return (np.array(ids, np.int64), np.array(lens, np.int64), np.array(flat, np.int64))
