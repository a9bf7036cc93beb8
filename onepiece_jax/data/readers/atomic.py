"""Any dataset in RecBole's atomic files: ``NAME.inter``, with ``NAME.item`` and ``NAME.user``
beside it when there are side features.

This is the format most public recommendation logs are already prepared in (RecBole ships and
converts dozens), and the simplest to write your own logs into: tab-separated text whose header
names each column with its type, ``name:type``, type ``token``, ``token_seq`` (space-separated
tokens), ``float`` or ``float_seq``.

* ``NAME.inter`` (one row per interaction) needs ``user_id`` and ``item_id`` (a dataset that
  names them otherwise, Yelp's ``business_id`` say, sets ``item_field``, as RecBole's
  ``ITEM_ID_FIELD``; ``user_field`` likewise); ``timestamp`` (seconds, written as a number;
  ``time_field`` names another column, which must then be there) orders each user's events,
  and without it the file's order does (``has_timestamps`` False; an event's time is its
  position in the user's sequence).
  Every interaction is one behaviour, ``interact``, unless ``level_field`` names a column that
  sets a funnel. A numeric column with ``level_thresholds`` (increasing): an event's level is
  the strongest it reaches, ``interact`` → ``FIELD>=T1`` → ``FIELD>=T2`` … (MovieLens with
  ``rating`` and (4, 5) is the ``ml100k`` reader's watched → rated ≥ 4 → rated 5). A token
  column with ``level_tokens``, weak to strong, each level one token or several joined by
  ``/`` (Taobao's ``("pv", "cart/fav", "buy")``); a token the list lacks is an error naming
  its line. The other columns are not read, and counted in
  ``skipped["inter_columns_not_used"]``.
* ``NAME.item`` / ``NAME.user`` (optional, keyed by the same id column as ``NAME.inter``; the
  first row per id counts, repeats are counted in
  ``skipped["duplicate_item_rows"]`` / ``"duplicate_user_rows"``): every ``token`` column is a
  categorical feature of that name (an empty cell is missing), every ``token_seq`` column a
  multi-valued one holding at most ``max_seq`` tokens (longer cells keep their first ones,
  counted in ``skipped["<entity>_<column>_truncated"]``; cells are compared as bytes); float
  columns are not read (counted in ``skipped["<entity>_columns_not_used"]``). Ids of the log
  missing from a catalogue get no features (``skipped["items_without_meta"]`` /
  ``"users_without_meta"``); catalogue ids with no interaction are still entities (a
  retrievable item).

Ids are tokens, as RecBole reads them. When every id of an entity is a plain integer (no sign,
no leading zero, no spaces) they are numbers and dense ids follow numeric order, so MovieLens'
RecBole files read here give the same dense ids as the ``ml100k`` reader; otherwise they are
text (UTF-8) in code-point order. Either way the raw ids are kept (``EventLog.item_ids`` /
``user_ids``) for serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onepiece_jax.data.events import DataError, EventLog, FeatureTable, identity_table
from onepiece_jax.data.readers import _common as c

BEHAVIORS = ("interact",)
TYPES = ("token", "token_seq", "float", "float_seq")
MAX_SEQ = 8
TIME = "timestamp"


def read_atomic(path: str | Path, *, max_seq: int = MAX_SEQ, user_field: str = "user_id",
                item_field: str = "item_id", time_field: str = TIME, level_field: str = "",
                level_thresholds: Sequence[float] = (),
                level_tokens: Sequence[str] = ()) -> EventLog:
    """Reads ``NAME.inter`` (a file, or the one ``*.inter`` of a folder) and its catalogues."""
    funnel = check_options(user_field=user_field, item_field=item_field, time_field=time_field,
                           level_field=level_field, level_thresholds=level_thresholds,
                           level_tokens=level_tokens)
    inter = _inter_file(Path(path))
    skipped: dict[str, int] = {}
    columns = _typed_header(inter)
    names = list(columns)
    read = {n: c.column_index(names, n, inter) for n in (user_field, item_field)}
    if time_field in columns or time_field != TIME:  # a column named by hand must be there
        read[time_field] = c.column_index(names, time_field, inter)
    if level_field:
        read[level_field] = c.column_index(names, level_field, inter)
    c.bump(skipped, "inter_columns_not_used", len(names) - len(read))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in read}
    for nums, table in c.iter_columns(inter, b"\t", len(names), skipped, header=True,
                                      cols=list(read.values())):
        cells = dict(zip(read, table.T, strict=True))
        for name in (user_field, item_field):
            parts[name].append(_ids(cells[name], nums, inter, name))
        if time_field in read:
            parts[time_field].append(c.to_time(cells[time_field], nums, inter, time_field))
        if level_field:
            parts[level_field].append(funnel.codes(cells[level_field], nums, inter))
    user_raw, item_raw = np.concatenate(parts[user_field]), np.concatenate(parts[item_field])
    time_parts = parts.get(time_field, [])
    item_raw, item_ids, item_features = _entity("item", item_field, item_raw, inter, skipped,
                                                max_seq)
    user_raw, user_ids, user_features = _entity("user", user_field, user_raw, inter, skipped,
                                                max_seq)
    user = c.dense(user_ids, user_raw)
    if time_parts:
        time = np.concatenate(time_parts)
    else:  # file order: each event's position in its user's sequence
        order = np.argsort(user, kind="stable")
        counts = np.bincount(user, minlength=user_ids.size + 1)
        time = np.empty(user.size, np.int64)
        time[order] = np.arange(user.size) - np.repeat(np.cumsum(counts) - counts, counts)
    codes = (np.concatenate(parts[level_field]) if level_field
             else np.zeros(user.size, np.int64))
    return c.build_log(
        dataset=inter.stem, user=user, item=c.dense(item_ids, item_raw), time=time,
        behavior=funnel.levels(codes), query=None, behaviors=funnel.behaviors,
        has_timestamps=bool(time_parts), item_features=item_features,
        user_features=user_features, item_ids=c.with_padding_row(item_ids),
        user_ids=c.with_padding_row(user_ids), skipped=skipped,
        raw_behavior_counts=funnel.raw_counts(codes))


OPTIONS = {"user_field": "user_id", "item_field": "item_id", "time_field": TIME,
           "level_field": "", "level_thresholds": (), "level_tokens": ()}


def options_of(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's options a config's ``dataset`` section sets (lists as tuples)."""
    return {key: tuple(dataset[key]) if isinstance(default, tuple) else dataset[key]
            for key, default in OPTIONS.items() if key in dataset}


def check_options(**options) -> _Funnel:
    """Refuses options (``OPTIONS``, defaults for those not given) the reader could not use:
    a ``ValueError`` saying what to give. Config validation calls it, so a bad combination stops
    before anything runs. Returns the funnel."""
    o = {**OPTIONS, **options}
    fields = [o["user_field"], o["item_field"], o["time_field"]]
    if "" in fields or len(set(fields)) != len(fields):
        raise ValueError(f"user_field={o['user_field']!r}, item_field={o['item_field']!r}, "
                         f"time_field={o['time_field']!r}: give three different column names")
    return _Funnel.of(o["level_field"], o["level_thresholds"], o["level_tokens"], fields)


@dataclasses.dataclass(frozen=True)
class _Funnel:
    """How an event's level is read: one level, thresholds on a number, or named tokens."""

    field: str
    thresholds: np.ndarray  # float64[L-1], increasing
    tokens: tuple[bytes, ...]  # every listed token, in level order
    token_level: np.ndarray  # int64[len(tokens)]: the level of each token
    behaviors: tuple[str, ...]

    @classmethod
    def of(cls, field: str, thresholds: Sequence[float], tokens: Sequence[str],
           reserved: Sequence[str]) -> _Funnel:
        numeric = all(isinstance(t, int | float) and not isinstance(t, bool) and np.isfinite(t)
                      for t in thresholds)
        groups = [str(level).split("/") for level in tokens]
        flat = [t for g in groups for t in g]
        problem = (
            "a column other than the ids and the timestamp" if field in reserved
            else "thresholds or tokens, not both" if thresholds and flat
            else "thresholds or tokens with it" if field and not (thresholds or flat)
            else "a field with them" if not field and (thresholds or flat)
            else "finite, increasing thresholds" if not numeric or any(
                b <= a for a, b in zip(thresholds, thresholds[1:], strict=False))
            else "each token once, none empty" if len(set(flat)) != len(flat) or "" in flat
            else None)
        if problem:
            raise ValueError(f"level_field={field!r}, level_thresholds={tuple(thresholds)}, "
                             f"level_tokens={tuple(tokens)}: give {problem}")
        thresholds = np.asarray(thresholds, np.float64)
        if flat:
            behaviors = tuple(tokens)
        else:
            behaviors = BEHAVIORS + tuple(f"{field}>={t:g}" for t in thresholds)
        return cls(field, thresholds, tuple(t.encode() for t in flat),
                   np.repeat(np.arange(1, len(groups) + 1), [len(g) for g in groups]),
                   behaviors)

    def codes(self, cells: np.ndarray, nums: np.ndarray, path: Path) -> np.ndarray:
        """One chunk's level column: numbers (thresholds) or token indices (tokens)."""
        if self.tokens:
            return c.lookup(np.char.strip(cells), {t: k for k, t in enumerate(self.tokens)},
                            nums, path, self.field)
        return c.to_float(cells, nums, path, self.field)

    def levels(self, codes: np.ndarray) -> np.ndarray:
        if self.tokens:
            return self.token_level[codes.astype(np.int64)]
        return 1 + np.searchsorted(self.thresholds, codes, side="right")

    def raw_counts(self, codes: np.ndarray) -> dict[str, int]:
        """Events per source token (merged levels kept apart), else per level."""
        if self.tokens:
            return c.count_by_name(codes.astype(np.int64), [t.decode() for t in self.tokens])
        return c.count_by_name(self.levels(codes), self.behaviors, base=1)


def _inter_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"expected one *.inter file in the folder, found "
                            f"{[p.name for p in found] or 'none'}; pass the file itself",
                            path=str(path))
        return found[0]
    return c.require_file(path, "RecBole atomic interaction file (NAME.inter)")


def _typed_header(path: Path) -> dict[str, str]:
    """``{name: type}`` of a RecBole header line, in column order."""
    columns: dict[str, str] = {}
    for cell in c.header_cells(path, b"\t"):
        name, _, kind = cell.partition(":")
        if kind not in TYPES:
            raise DataError(f"header cell {cell!r} is not name:type with a type of "
                            f"{', '.join(TYPES)}", path=str(path), line=1, field=name)
        if name in columns:
            raise DataError(f"header names column {name!r} twice", path=str(path), line=1,
                            field=name)
        columns[name] = kind
    return columns


def _ids(tokens: np.ndarray, nums: np.ndarray, path: Path, field: str) -> np.ndarray:
    """An id column's ``S`` tokens, stripped; an empty or non-UTF-8 id (ids may be served as
    text) names its line."""
    tokens = np.char.strip(tokens)
    bad = np.flatnonzero(tokens == b"")
    if bad.size:
        raise DataError("empty id", path=str(path), line=int(nums[bad[0]]), field=field)
    try:
        np.char.decode(tokens, "utf-8")
    except UnicodeDecodeError:
        i = c.first_bad(tokens, _is_utf8)
        raise DataError(f"not UTF-8: {tokens[i]!r}", path=str(path), line=int(nums[i]),
                        field=field) from None
    return tokens


def _is_utf8(token: bytes) -> bool:
    try:
        token.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclasses.dataclass
class _Catalogue:
    """One ``.item`` / ``.user`` file: its ids (``S``, first row per id) and feature cells."""

    ids: np.ndarray
    tokens: dict[str, np.ndarray]  # token column: S[n]
    seqs: dict[str, tuple[np.ndarray, np.ndarray]]  # token_seq column: (lengths[n], flat S)


def _catalogue(path: Path, entity: str, field: str, skipped: dict[str, int]
               ) -> _Catalogue | None:
    if not path.exists():
        return None
    c.require_file(path, f"RecBole atomic {entity} file")
    columns = _typed_header(path)
    names = list(columns)
    key = c.column_index(names, field, path)
    used = [k for k, n in enumerate(names) if k != key and columns[n] in ("token", "token_seq")]
    c.bump(skipped, f"{entity}_columns_not_used", len(names) - 1 - len(used))
    nums, table = c.read_columns(path, b"\t", len(names), skipped, header=True)
    ids = _ids(table[:, key], nums, path, field)
    keep = c.first_rows(ids, skipped, f"duplicate_{entity}_rows")
    nums, table, ids = nums[keep], table[keep], ids[keep]
    tokens, seqs = {}, {}
    for k in used:
        name = names[k]
        cells = np.char.strip(table[:, k])
        if columns[name] == "token":
            tokens[name] = cells
        else:
            split = [cell.split() for cell in cells.tolist()]
            lengths = np.array([len(s) for s in split], np.int64)
            flat = np.array([t for s in split for t in s], dtype="S")
            seqs[name] = lengths, flat
    return _Catalogue(ids, tokens, seqs)


def _entity(entity: str, field: str, raw: np.ndarray, inter: Path, skipped: dict[str, int],
            max_seq: int) -> tuple[np.ndarray, np.ndarray, dict[str, FeatureTable]]:
    """The log's ids and the sorted id universe (numbers when every id is a plain integer),
    and the entity's feature tables from its catalogue beside ``inter``, if there is one (its
    id column named ``field``; the feature is ``ENTITY_id`` whatever the column's name)."""
    cat = _catalogue(inter.with_suffix(f".{entity}"), entity, field, skipped)
    known = raw if cat is None else np.concatenate([raw, cat.ids])
    as_int = _plain_ints(known)
    if as_int is not None:
        raw, cat_ids = as_int[:raw.size], as_int[raw.size:]
    else:
        raw, cat_ids = np.char.decode(raw, "utf-8"), (
            None if cat is None else np.char.decode(cat.ids, "utf-8"))
    vocab = c.sorted_vocab(raw) if cat is None else c.sorted_vocab(raw, cat_ids)
    features = {f"{entity}_id": identity_table(vocab.size)}
    if cat is not None:
        c.bump(skipped, f"{entity}s_without_meta", np.setdiff1d(vocab, cat_ids).size)
        rows = c.dense(vocab, cat_ids)
        for name, cells in cat.tokens.items():
            features[name] = c.entity_table(vocab.size, rows, cells, missing=b"")
        for name, (lengths, flat) in cat.seqs.items():
            features[name], truncated = c.ragged_table(vocab.size, rows, lengths, flat, max_seq)
            c.bump(skipped, f"{entity}_{name}_truncated", truncated)
    return raw, vocab, features


def _plain_ints(tokens: np.ndarray) -> np.ndarray | None:
    """int64 values of ``S`` tokens if each is a plain integer written the one way (``42``,
    not ``042``, ``+42`` or ``4.2e1``), else None: then ids are compared as text."""
    if not tokens.size or not np.all(np.char.isdigit(tokens)):
        return None
    if np.any((np.char.str_len(tokens) > 1) & (np.char.startswith(tokens, b"0"))):
        return None
    if np.any(np.char.str_len(tokens) > 18):  # beyond int64's safe width
        return None
    return tokens.astype(np.int64)
