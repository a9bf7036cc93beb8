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
shared by several cuts of the data, so extra entries are expected, not corruption. An item id
listed twice (``"1"`` and ``"1"``, or ``"1"`` and ``"01"``) keeps its first list; the others
are counted in ``skipped["duplicate_attribute_items"]`` (plain ``json.loads`` would keep the last
one silently). A file that is not UTF-8 fails naming the line of the first bad byte.
"""

from __future__ import annotations

import itertools
import json
import re
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
    attr_ids, attr_len, attr_flat = _read_attributes(attr_path, skipped)
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


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order, so repeated keys are seen."""


_ITEM_ID = re.compile(r"-?[0-9]+")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _read_attributes(path: Path,
                     skipped: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item ids, attribute-list lengths and the concatenated attribute ids of the json file."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8: byte {raw[e.start]:#04x} at offset {e.start}",
                        path=str(path), line=raw.count(b"\n", 0, e.start) + 1) from None
    if not text.strip():
        raise DataError("empty file", path=str(path), line=1)
    try:
        data = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    if not isinstance(data, _Pairs):
        raise DataError("expected an object {item_id: [attribute ids]}", path=str(path), line=1)
    ids, lens, flat = [], [], []
    seen: set[int] = set()
    def where(key: str) -> dict:
        """The file and the line of the key (json.loads keeps no positions; errors only)."""
        return {"path": str(path), "line": text.count("\n", 0, max(text.find(f'"{key}"'), 0)) + 1}

    for key, values in data:
        if not _ITEM_ID.fullmatch(key.strip()):  # str.isdigit() also accepts "²"
            raise DataError(f"item id {key!r} is not an integer", field="item_id", **where(key))
        if not isinstance(values, list) or isinstance(values, _Pairs) or not all(
                isinstance(v, int) and not isinstance(v, bool) and _INT64[0] <= v <= _INT64[1]
                for v in values):
            raise DataError(f"attributes of item {key} must be a list of int64 integers, got "
                            f"{values!r}", field="attributes", **where(key))
        item = int(key)
        if item in seen:
            c.bump(skipped, "duplicate_attribute_items", 1)
            continue
        seen.add(item)
        ids.append(item)
        lens.append(len(values))
        flat.extend(values)
    return (np.array(ids, np.int64), np.array(lens, np.int64), np.array(flat, np.int64))
