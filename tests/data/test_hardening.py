"""Input hardening: property-based tests (hypothesis) for every reader and the context builder.

Each reader test draws a small valid file set, applies at most one corruption from a fault class
(truncated lines, wrong separators, wrong column counts, non-numeric / negative / overflowing ids,
timestamps out of order or missing, duplicated events, users with 0 or 1 event, sequences 100x
longer than usual, unknown behaviour names, non-UTF-8 bytes, empty files, blank lines, catalogue
mismatches), writes it to a temporary folder, and compares the reader with an independent
pure-Python reference parser of the format (written from the format's documentation, no numpy):

* either both succeed and the EventLog equals the reference (every event in log order with its
  raw user and item ids, time and level; entity counts; raw behaviour counts; ``skipped`` with
  the exact count of every documented recoverable case; a few feature tables) and validates,
* or both fail, and the reader's :class:`DataError` names the file, the line and, where one
  applies, the field that the reference blames.

The generic RecBole atomic-file reader is checked differentially instead: on the MovieLens
RecBole cases it must read what the ml100k reader reads, alike, and fail only naming file and
line.

Every property is parametrized by fault class and runs ceil(200 / classes) examples per class,
so each reader gets >= 200 examples. Per fault class tallies (cases, outcomes) are printed at the
end of the module (run with ``-s``) and reported as hypothesis events
(``--hypothesis-show-statistics``). The context builder gets the same treatment with logs built
in memory: histories 100x ``ih_max_len``, users with 0/1/2 events (counted in
``ContextBuilder.skipped``), shuffled timestamps with ties, duplicated events.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import math
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from onepiece_jax.data.context import ContextBuilder, ContextConfig
from onepiece_jax.data.events import DataError, EventLog, identity_table
from onepiece_jax.data.readers import (
    read_amazon,
    read_atomic,
    read_jdsearch,
    read_ml100k,
    read_taobao,
)

EXAMPLES_PER_READER = 200


def hardening(faults: tuple[str, ...]):
    """Parametrizes a property over ``faults`` and runs ceil(200 / len(faults)) examples per
    fault class, so every reader sees >= 200 examples and every class a known share of them
    (one test drawing the class itself leaves some classes with a handful of cases)."""
    per_fault = settings(max_examples=math.ceil(EXAMPLES_PER_READER / len(faults)),
                         deadline=None, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.large_base_example])

    def wrap(test):
        return pytest.mark.parametrize("fault", faults)(per_fault(test))

    return wrap


# reader -> fault class -> outcome -> cases
TALLY: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
    lambda: collections.defaultdict(collections.Counter))

# the fault classes of the issue (each reader runs the ones that apply to its format)
GENERIC_FAULTS = ("none", "truncated_line", "wrong_separator", "wrong_column_count",
                  "non_numeric_id", "negative_id", "time_out_of_order", "time_missing",
                  "duplicate_events", "sparse_users", "long_sequence", "unknown_behaviour",
                  "non_utf8", "empty_file", "blank_lines", "catalogue_mismatch")
BAD_NUMBERS = (b"x12", b"1.5", b"", b" ", b"\xc2\xb2", b"12abc", b"0x1f", b"NaN", b"-",
               b"99999999999999999999999", b"1e400")
BAD_BYTES = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80", b"\xe2\x82", b"\xc0\xaf")
LONG = 100  # "sequences 100x longer": a long user has 100x the longest normal history


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    lines = ["", "hardening cases per reader / fault class (outcome: cases)"]
    for reader in sorted(TALLY):
        total = sum(sum(c.values()) for c in TALLY[reader].values())
        lines.append(f"  {reader}: {total} cases")
        for fault in sorted(TALLY[reader]):
            outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(TALLY[reader][fault].items()))
            lines.append(f"    {fault:<20} {sum(TALLY[reader][fault].values()):>3}  {outcomes}")
    print("\n".join(lines))


# --- reference semantics shared by the formats ---------------------------------------------------

class RefError(Exception):
    """What the reference parser blames: the file (name), the line and the field."""

    def __init__(self, file: str, line: int | None, field: str | None = None):
        super().__init__(f"{file}, line {line}, field {field}")
        self.file, self.line, self.field = file, line, field


@dataclasses.dataclass
class Expected:
    events: list[tuple]  # (raw user, raw item, time, level) in log order
    num_users: int
    num_items: int
    skipped: dict[str, int]
    raw_counts: dict[str, int]
    extra: object = None  # callable(log) with format-specific checks


def file_lines(data: bytes) -> list[bytes]:
    """Lines as ``readlines`` + ``rstrip(b"\\r\\n")`` see them."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [p.rstrip(b"\r\n") for p in parts]


def bump(skipped: dict[str, int], key: str, n: int) -> None:
    if n:
        skipped[key] = skipped.get(key, 0) + n


def data_lines(name: str, data: bytes, skipped: dict[str, int],
               header: bool = False) -> list[tuple[int, bytes]]:
    """(line number, line) of the non-blank data lines; blank lines counted, empty file fails."""
    lines = file_lines(data)
    if header and (not lines or not lines[0].strip()):
        raise RefError(name, 1)
    start = 1 if header else 0
    out = [(n, ln) for n, ln in enumerate(lines[start:], start + 1) if ln.strip()]
    bump(skipped, "blank_lines", len(lines) - start - len(out))
    if not out:
        raise RefError(name, len(lines) + 1)
    return out


def header_columns(name: str, data: bytes, sep: bytes, wanted: tuple[str, ...]):
    lines = file_lines(data)
    first = lines[0] if lines else b""
    if not first.strip():
        raise RefError(name, 1)
    names = [c.decode("utf-8", "replace").split(":")[0].strip() for c in first.split(sep)]
    for w in wanted:
        if w not in names:
            raise RefError(name, 1, w)
    return names, [names.index(w) for w in wanted]


def split_rows(name: str, lines: list[tuple[int, bytes]], sep: bytes, ncols: int):
    for n, ln in lines:
        if ln.count(sep) != ncols - 1:
            raise RefError(name, n)
    return [ln.split(sep) for _, ln in lines]


def as_int(tok: bytes):
    try:
        v = int(tok)
    except ValueError:
        return None
    return v if -(2 ** 63) <= v < 2 ** 63 else None


def as_float(tok: bytes):
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_column(name: str, lines, rows, j: int, field: str, conv) -> list:
    """Converts column ``j`` of every row; the first bad token names its line and field."""
    out = []
    for (n, _), row in zip(lines, rows, strict=True):
        v = conv(row[j])
        if v is None:
            raise RefError(name, n, field)
        out.append(v)
    return out


def sort_events(events: list[tuple]) -> list[tuple]:
    """Log order: by user, then time, ties in file order (events are listed in file order)."""
    order = sorted(range(len(events)), key=lambda k: (events[k][0], events[k][2], k))
    return [events[k] for k in order]


def check_reader(reader: str, fault: str, files: dict[str, bytes], read, reference) -> None:
    """Writes ``files`` to a temp dir, runs the reader and the reference, compares, tallies."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        try:
            expected = reference(files)
        except RefError as e:
            expected = e
        try:
            log = read(folder)
        except DataError as err:
            msg = str(err)
            assert isinstance(expected, RefError), f"{fault}: reader failed: {msg}"
            assert err.path is not None and Path(err.path).name == expected.file, \
                (msg, vars(expected))
            assert expected.file in msg, msg
            assert err.line == expected.line and f"line {expected.line}" in msg, \
                (msg, vars(expected))
            if expected.field is not None:
                assert err.field == expected.field and repr(expected.field) in msg, \
                    (msg, vars(expected))
            outcome = "DataError(file,line" + (",field)" if err.field else ")")
        else:
            assert not isinstance(expected, RefError), \
                f"{fault}: reader returned a log, expected DataError {vars(expected)}"
            _compare(log, expected)
            outcome = ("ok, skipped " + "+".join(sorted(log.skipped))) if log.skipped else "ok"
    TALLY[reader][fault][outcome] += 1
    event(f"{fault}: {outcome}")


def _compare(log: EventLog, want: Expected) -> None:
    log.validate()
    got = list(zip(log.user_ids[log.user].tolist(), log.item_ids[log.item].tolist(),
                   log.time.tolist(), log.behavior.tolist(), strict=True))
    assert got == [e[:4] for e in want.events]
    assert (log.num_users, log.num_items) == (want.num_users, want.num_items)
    assert log.skipped == want.skipped
    assert log.raw_behavior_counts == want.raw_counts
    if want.extra is not None:
        want.extra(log)


# --- generic corruptions of a line-oriented text file ----------------------------------------

@dataclasses.dataclass
class Text:
    """A text file as lines (without newline); rendered with ``newline``."""

    lines: list[bytes]
    header: bool = False
    final_newline: bool = True
    newline: bytes = b"\n"

    def render(self) -> bytes:
        if not self.lines:
            return b""
        body = self.newline.join(self.lines)
        return body + self.newline if self.final_newline else body

    def data_range(self) -> range:
        return range(1 if self.header else 0, len(self.lines))


@dataclasses.dataclass
class Layout:
    sep: bytes
    wrong_seps: tuple[bytes, ...]
    id_fields: tuple[int, ...]  # integer id columns
    time_field: int | None = None
    behaviour_field: int | None = None
    list_fields: frozenset = frozenset()  # JDsearch: "_"-separated list columns


def edit_token(draw, line: bytes, lay: Layout, j: int, fn) -> bytes:
    parts = line.split(lay.sep)
    j = min(j, len(parts) - 1)
    if j in lay.list_fields and parts[j]:
        toks = parts[j].split(b"_")
        e = draw(st.integers(0, len(toks) - 1))
        toks[e] = fn(toks[e])
        parts[j] = b"_".join(toks)
    else:
        parts[j] = fn(parts[j])
    return lay.sep.join(parts)


def generic_fault(draw, fault: str, text: Text, lay: Layout, *,
                  bad_behaviours: tuple[bytes, ...] = ()) -> None:
    """Applies one line-level corruption of class ``fault`` to ``text`` in place."""
    rows = text.data_range()
    if not rows:
        return
    k = draw(st.sampled_from(rows))
    line = text.lines[k]
    if fault == "truncated_line":
        text.lines[k] = line[:draw(st.integers(0, max(len(line) - 1, 0)))]
        if k == len(text.lines) - 1:
            text.final_newline = draw(st.booleans())  # a file cut mid-write has no newline
    elif fault == "wrong_separator":
        how = draw(st.sampled_from(["one_line", "every_line", "crlf"]))
        if how == "crlf":
            text.newline = b"\r\n"
        else:
            wrong = draw(st.sampled_from(lay.wrong_seps))
            for r in ([k] if how == "one_line" else list(rows)):
                text.lines[r] = text.lines[r].replace(lay.sep, wrong)
    elif fault == "wrong_column_count":
        parts = line.split(lay.sep)
        if draw(st.booleans()) and len(parts) > 1:
            del parts[draw(st.integers(0, len(parts) - 1))]
        else:
            parts.insert(draw(st.integers(0, len(parts))), b"7")
        text.lines[k] = lay.sep.join(parts)
    elif fault == "non_numeric_id":
        bad = draw(st.sampled_from(BAD_NUMBERS))
        text.lines[k] = edit_token(draw, line, lay, draw(st.sampled_from(lay.id_fields)),
                                   lambda _: bad)
    elif fault == "negative_id":
        neg = b"-%d" % draw(st.integers(0, 10 ** 6))
        text.lines[k] = edit_token(draw, line, lay, draw(st.sampled_from(lay.id_fields)),
                                   lambda _: neg)
    elif fault == "time_missing":
        bad = draw(st.sampled_from([b"", b" ", b"NaN", b"-", b"null", b"1e400"]))
        text.lines[k] = edit_token(draw, line, lay, lay.time_field, lambda _: bad)
    elif fault == "unknown_behaviour":
        bad = draw(st.sampled_from(bad_behaviours))
        text.lines[k] = edit_token(draw, line, lay, lay.behaviour_field, lambda _: bad)
    elif fault == "non_utf8":
        junk = draw(st.sampled_from(BAD_BYTES))
        j = draw(st.integers(0, line.count(lay.sep)))

        def insert(tok: bytes) -> bytes:
            at = draw(st.integers(0, len(tok)))
            return tok[:at] + junk + tok[at:]

        text.lines[k] = edit_token(draw, line, lay, j, insert)
    elif fault == "blank_lines":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(rows.start, len(text.lines)))
            text.lines.insert(at, draw(st.sampled_from([b"", b"  ", b"\t", b" \r"])))
    elif fault == "duplicate_events":
        for _ in range(draw(st.integers(1, 3))):
            src = draw(st.sampled_from(text.data_range()))
            text.lines.insert(draw(st.integers(rows.start, len(text.lines))), text.lines[src])
    elif fault == "time_out_of_order":
        body = text.lines[rows.start:]
        random.Random(draw(st.integers(0, 2 ** 32))).shuffle(body)
        text.lines[rows.start:] = body
    else:
        raise AssertionError(fault)


# --- Taobao ---------------------------------------------------------------------------------

TAOBAO_LEVEL = {b"pv": 1, b"cart": 2, b"fav": 2, b"buy": 3}
TAOBAO_LAYOUT = Layout(sep=b",", wrong_seps=(b";", b"\t", b" ", b"|"), id_fields=(0, 1, 2),
                       time_field=4, behaviour_field=3)
TAOBAO_FAULTS = GENERIC_FAULTS


def ref_taobao(files: dict[str, bytes]) -> Expected:
    name = "UserBehavior.csv"
    skipped: dict[str, int] = {}
    lines = data_lines(name, files[name], skipped)
    rows = split_rows(name, lines, b",", 5)
    user = parse_column(name, lines, rows, 0, "user_id", as_int)
    item = parse_column(name, lines, rows, 1, "item_id", as_int)
    cat = parse_column(name, lines, rows, 2, "category_id", as_int)
    beh = parse_column(name, lines, rows, 3, "behavior", lambda t: t.strip() if t.strip()
                       in TAOBAO_LEVEL else None)
    time = parse_column(name, lines, rows, 4, "timestamp", as_int)
    bump(skipped, "item_category_conflicts", len(set(zip(item, cat, strict=True))) - len(set(item)))
    last_cat = dict(zip(item, cat, strict=True))  # the last row wins
    cats = sorted(set(cat))

    def extra(log: EventLog) -> None:
        table = log.item_features["category"]
        assert table.vocab_size == len(cats) + 1
        want = [0] + [cats.index(last_cat[i]) + 1 for i in log.item_ids[1:].tolist()]
        assert table.values[:, 0].tolist() == want

    events = [(u, i, t, TAOBAO_LEVEL[b]) for u, i, t, b in zip(user, item, time, beh, strict=True)]
    counts = collections.Counter(beh)
    return Expected(sort_events(events), len(set(user)), len(set(item)), skipped,
                    {n: counts[n.encode()] for n in ("pv", "cart", "fav", "buy")}, extra)


@st.composite
def taobao_case(draw, fault: str):
    users = draw(st.lists(st.integers(1, 10 ** 9), min_size=1, max_size=5, unique=True))
    items = draw(st.lists(st.integers(1, 10 ** 9), min_size=1, max_size=6, unique=True))
    cat_of = {i: draw(st.integers(1, 4000)) for i in items}
    rows = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items),
                                   st.sampled_from(sorted(TAOBAO_LEVEL)),
                                   st.integers(1_511_500_000, 1_511_500_300)),
                         min_size=1, max_size=20))
    rows.sort(key=lambda r: (r[0], r[3]))
    rows = [[u, i, cat_of[i], b, t] for u, i, b, t in rows]
    if fault == "sparse_users":  # users with exactly one event
        for _ in range(draw(st.integers(1, 3))):
            rows.append([draw(st.integers(10 ** 9 + 1, 2 * 10 ** 9)), rows[0][1], rows[0][2],
                         b"buy", rows[0][4]])
    elif fault == "long_sequence":
        rng = random.Random(draw(st.integers(0, 2 ** 32)))
        longest = max(collections.Counter(r[0] for r in rows).values())
        u = rows[0][0]
        for _ in range(LONG * longest):
            i = rng.choice(items)
            rows.append([u, i, cat_of[i], rng.choice(sorted(TAOBAO_LEVEL)),
                         rng.randrange(1_511_000_000, 1_512_000_000)])
    elif fault == "catalogue_mismatch":  # an item listed under a second category
        r = list(draw(st.sampled_from(rows)))
        r[2] = r[2] + draw(st.integers(1, 50))
        rows.insert(draw(st.integers(0, len(rows))), r)
    text = Text([b",".join(x if isinstance(x, bytes) else b"%d" % x for x in r) for r in rows])
    if fault == "empty_file":
        text = Text(draw(st.sampled_from([[], [b""], [b"", b"  ", b""]])))
    elif fault not in ("none", "sparse_users", "long_sequence", "catalogue_mismatch"):
        generic_fault(draw, fault, text, TAOBAO_LAYOUT,
                      bad_behaviours=(b"click", b"PV", b"", b" pv ", b"Buy", b"pv\xff", b"cart2"))
    return {"UserBehavior.csv": text.render()}


@hardening(TAOBAO_FAULTS)
@given(data=st.data())
def test_taobao_hardening(fault, data):
    files = data.draw(taobao_case(fault))
    check_reader("taobao", fault, files, lambda d: read_taobao(d / "UserBehavior.csv"),
                 ref_taobao)


# --- MovieLens-100K (RecBole and GroupLens layouts) -------------------------------------------

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
RECBOLE_HEADERS = {
    "inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "user": b"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"}
ML_FILES = {"recbole": {"inter": "ml-100k.inter", "item": "ml-100k.item", "user": "ml-100k.user"},
            "grouplens": {"inter": "u.data", "item": "u.item", "user": "u.user"}}


def ml_layouts(fmt: str) -> dict[str, Layout]:
    tab, bar = (b"\t", b"|") if fmt == "grouplens" else (b"\t", b"\t")
    return {"inter": Layout(tab, (b",", b" ", b";"), (0, 1), time_field=3, behaviour_field=2),
            "item": Layout(bar, (b",", b";"), (0,)),
            "user": Layout(bar, (b",", b";"), (0, 1))}


def ref_ml100k(fmt: str):
    names = ML_FILES[fmt]

    def reference(files: dict[str, bytes]) -> Expected:
        skipped: dict[str, int] = {}
        # ratings
        inter = names["inter"]
        if fmt == "recbole":
            cols, idx = header_columns(inter, files[inter], b"\t",
                                       ("user_id", "item_id", "rating", "timestamp"))
            ncols = len(cols)
        else:
            idx, ncols = [0, 1, 2, 3], 4
        lines = data_lines(inter, files[inter], skipped, header=fmt == "recbole")
        rows = split_rows(inter, lines, b"\t", ncols)
        user = parse_column(inter, lines, rows, idx[0], "user_id", as_int)
        item = parse_column(inter, lines, rows, idx[1], "item_id", as_int)
        rating = parse_column(inter, lines, rows, idx[2], "rating", as_float)

        def timestamp(tok):
            v = as_float(tok)
            return None if v is None or abs(v) >= 2.0 ** 63 else round(v)

        time = parse_column(inter, lines, rows, idx[3], "timestamp", timestamp)
        # movies: first row per raw id token
        mfile = names["item"]
        if fmt == "recbole":
            cols, midx = header_columns(mfile, files[mfile], b"\t",
                                        ("item_id", "release_year", "class"))
            lines = data_lines(mfile, files[mfile], skipped, header=True)
            rows = split_rows(mfile, lines, b"\t", len(cols))
        else:
            midx = [0, 2]
            lines = data_lines(mfile, files[mfile], skipped)
            rows = split_rows(mfile, lines, b"|", 5 + len(GENRES))
        keep, seen = [], set()
        for k, row in enumerate(rows):
            if row[midx[0]] not in seen:
                seen.add(row[midx[0]])
                keep.append(k)
        bump(skipped, "duplicate_item_rows", len(rows) - len(keep))
        lines, rows = [lines[k] for k in keep], [rows[k] for k in keep]
        if fmt == "recbole":
            movie_ids = parse_column(mfile, lines, rows, midx[0], "item_id", as_int)
            years = [r[midx[1]] for r in rows]
            genres = [len(r[midx[2]].split()) for r in rows]
        else:
            flags = [parse_column(mfile, lines, rows, 5 + g, f"genre:{name}", as_int)
                     for g, name in enumerate(GENRES)]
            for k, (n, _) in enumerate(lines):
                for g, name in enumerate(GENRES):
                    if flags[g][k] not in (0, 1):
                        raise RefError(mfile, n, f"genre:{name}")
            movie_ids = parse_column(mfile, lines, rows, 0, "item_id", as_int)
            years = [r[2].strip()[-4:] for r in rows]
            genres = [sum(flags[g][k] for g in range(len(GENRES))) for k in range(len(rows))]
        year = [int(y) if y.strip().isdigit() else 0 for y in years]
        bump(skipped, "items_without_year", year.count(0))
        # people
        pfile = names["user"]
        if fmt == "recbole":
            cols, pidx = header_columns(pfile, files[pfile], b"\t",
                                        ("user_id", "age", "gender", "occupation"))
            lines = data_lines(pfile, files[pfile], skipped, header=True)
            rows = split_rows(pfile, lines, b"\t", len(cols))
        else:
            pidx = [0, 1]
            lines = data_lines(pfile, files[pfile], skipped)
            rows = split_rows(pfile, lines, b"|", 5)
        keep, seen = [], set()
        for k, row in enumerate(rows):
            if row[pidx[0]] not in seen:
                seen.add(row[pidx[0]])
                keep.append(k)
        bump(skipped, "duplicate_user_rows", len(rows) - len(keep))
        lines, rows = [lines[k] for k in keep], [rows[k] for k in keep]
        people = parse_column(pfile, lines, rows, pidx[0], "user_id", as_int)
        parse_column(pfile, lines, rows, pidx[1], "age", as_int)
        users, items = set(user) | set(people), set(item) | set(movie_ids)
        bump(skipped, "users_without_meta", len(users - set(people)))
        bump(skipped, "items_without_meta", len(items - set(movie_ids)))
        skipped = dict(sorted(skipped.items()))
        events = [(u, i, t, 3 if r >= 5 else 2 if r >= 4 else 1)
                  for u, i, r, t in zip(user, item, rating, time, strict=True)]
        counts = collections.Counter(rating)
        n_genres = dict(zip(movie_ids, genres, strict=True))
        year_of = dict(zip(movie_ids, year, strict=True))
        width = max(1, min(max(genres), len(GENRES)))

        def extra(log: EventLog) -> None:
            raw_items = log.item_ids[1:].tolist()
            genre = log.item_features["genre"].values[1:]
            assert genre.shape[1] == width
            assert (genre > 0).sum(axis=1).tolist() == [min(n_genres.get(i, 0), width)
                                                        for i in raw_items]
            assert (log.item_features["year"].values[1:, 0] > 0).tolist() == [
                year_of.get(i, 0) >= 5 for i in raw_items]
            assert (log.user_features["gender"].values[1:, 0] > 0).tolist() == [
                u in set(people) for u in log.user_ids[1:].tolist()]

        return Expected(sort_events(events), len(users), len(items), skipped,
                        {f"rating={v:g}": counts[v] for v in sorted(counts)}, extra)

    return reference


@st.composite
def ml100k_case(draw, fmt: str, fault: str):
    users = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=5, unique=True))
    items = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=6, unique=True))
    ratings = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items),
                                      st.sampled_from([b"1", b"2", b"3", b"4", b"5", b"4.0",
                                                       b"2.5"]),
                                      st.integers(874_700_000, 874_700_400)),
                            min_size=1, max_size=20, unique_by=lambda r: (r[0], r[1])))
    ratings.sort(key=lambda r: (r[0], r[3]))
    meta_items, meta_users = list(items), list(users)
    if fault == "sparse_users":  # users with 0 events (catalogue only) and with 1 event
        meta_users += draw(st.lists(st.integers(5001, 9000), min_size=1, max_size=3,
                                    unique=True))
        ratings.append((draw(st.integers(9001, 9999)), items[0], b"5", 874_700_000))
    elif fault == "long_sequence":
        rng = random.Random(draw(st.integers(0, 2 ** 32)))
        longest = max(collections.Counter(r[0] for r in ratings).values())
        u = ratings[0][0]
        extra_items = list(range(20_000, 20_000 + LONG * longest))
        meta_items += extra_items
        ratings += [(u, i, rng.choice([b"1", b"3", b"5"]), rng.randrange(874_000_000,
                                                                        875_000_000))
                    for i in extra_items]
    elif fault == "catalogue_mismatch":
        what = draw(st.sampled_from(["no_item_meta", "no_user_meta", "dup_item", "dup_user"]))
        if what == "no_item_meta" and len(meta_items) > 1:
            meta_items = meta_items[1:]
        elif what == "no_user_meta" and len(meta_users) > 1:
            meta_users = meta_users[1:]
        elif what == "dup_item":
            meta_items.insert(draw(st.integers(0, len(meta_items))), items[-1])
        elif what == "dup_user":
            meta_users.insert(draw(st.integers(0, len(meta_users))), users[-1])
    years = [b"1995", b"1977", b"", b"unkonwn", b"19x5"]
    genre_of = {i: draw(st.lists(st.sampled_from(GENRES), max_size=4, unique=True))
                for i in items}
    year_of = {i: draw(st.sampled_from(years)) for i in items}
    rng = random.Random(draw(st.integers(0, 2 ** 32)))
    for i in set(meta_items) - set(items):  # the long sequence's extra movies
        genre_of[i] = rng.sample(GENRES, rng.randint(0, 3))
        year_of[i] = rng.choice(years)
    if fmt == "recbole":
        inter = [RECBOLE_HEADERS["inter"]] + [b"%d\t%d\t%s\t%d" % r for r in ratings]
        item = [RECBOLE_HEADERS["item"]] + [
            b"%d\tTitle %d\t%s\t%s" % (i, i, year_of[i], " ".join(genre_of[i]).encode())
            for i in meta_items]
        user = [RECBOLE_HEADERS["user"]] + [b"%d\t%d\t%s\tother\t85711"
                                            % (u, 10 + u % 60, b"MF"[u % 2:u % 2 + 1])
                                            for u in meta_users]
    else:
        inter = [b"%d\t%d\t%s\t%d" % r for r in ratings]

        def flags(i):
            return b"|".join(b"1" if g in genre_of[i] else b"0" for g in GENRES)

        item = [b"%d|Title %d (1995)|01-Jan-%s||http://x|%s" % (i, i, year_of[i], flags(i))
                for i in meta_items]
        user = [b"%d|%d|%s|other|85711" % (u, 10 + u % 60, b"MF"[u % 2:u % 2 + 1])
                for u in meta_users]
    header = fmt == "recbole"
    texts = {"inter": Text(inter, header), "item": Text(item, header),
             "user": Text(user, header)}
    lay = ml_layouts(fmt)
    if fault == "empty_file":
        which = draw(st.sampled_from(sorted(texts)))
        texts[which] = Text(draw(st.sampled_from(
            [[], [b""]] + ([[RECBOLE_HEADERS[which]], [RECBOLE_HEADERS[which], b" "]]
                           if header else [[b"", b""]]))))
    elif fault in ("time_missing", "unknown_behaviour", "time_out_of_order"):
        # ratings carry time; "behaviour" is the rating that sets the level
        generic_fault(draw, fault, texts["inter"], lay["inter"],
                      bad_behaviours=(b"five", b"", b"NaN", b"inf", b"4,5", b"\xe2\x98\x85"))
    elif fault not in ("none", "sparse_users", "long_sequence", "catalogue_mismatch"):
        which = draw(st.sampled_from(sorted(texts)))
        generic_fault(draw, fault, texts[which], lay[which])
    names = ML_FILES[fmt]
    return {names[k]: t.render() for k, t in texts.items()}


@hardening(GENERIC_FAULTS)
@given(data=st.data())
def test_ml100k_recbole_hardening(fault, data):
    files = data.draw(ml100k_case("recbole", fault))
    check_reader("ml100k (RecBole)", fault, files, read_ml100k, ref_ml100k("recbole"))


@hardening(GENERIC_FAULTS)
@given(data=st.data())
def test_ml100k_grouplens_hardening(fault, data):
    files = data.draw(ml100k_case("grouplens", fault))
    check_reader("ml100k (GroupLens)", fault, files, read_ml100k, ref_ml100k("grouplens"))


# --- RecBole atomic files (any dataset), read differentially against the ml100k reader --------

def _as_number(raw):
    """A raw id as the ml100k reader reads it (an integer) where it parses as one; the atomic
    reader keeps ids such as ``-0`` or ``+5`` as text tokens."""
    try:
        return int(raw)
    except ValueError:
        return raw


def _sequences(log: EventLog) -> dict:
    """Each raw user's events, in log order, as (raw item, time, level)."""
    out = collections.defaultdict(list)
    for u, i, t, b in zip(log.user_ids[log.user].tolist(), log.item_ids[log.item].tolist(),
                          log.time.tolist(), log.behavior.tolist(), strict=True):
        out[_as_number(u)].append((_as_number(i), t, b))
    return dict(out)


def _without_levels(sequences: dict) -> dict:
    return {user: [event[:2] for event in seq] for user, seq in sequences.items()}


@hardening(GENERIC_FAULTS)
@given(data=st.data())
def test_atomic_reads_every_recbole_file_set_as_the_ml100k_reader_does(fault, data):
    """The same generated and corrupted MovieLens RecBole files (the ml100k property's cases):
    where the ml100k reader (checked against its reference above) reads them, the generic
    atomic reader, with MovieLens' funnel (rating thresholds 4, 5) and without (one level),
    gives every user the same sequence of items, times and levels and the same entity
    universes; where it fails, its error names file and line. It may read what ml100k refuses
    (an age or year it does not parse, a rating when it has no funnel; ids that are not
    integers, kept as text)."""
    files = data.draw(ml100k_case("recbole", fault))
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in files.items():
            (folder / name).write_bytes(content)
        try:
            expected = _sequences(ml := read_ml100k(folder))
        except DataError:
            ml = expected = None
        for levels in ({}, {"level_field": "rating", "level_thresholds": (4, 5)}):
            try:
                log = read_atomic(folder, **levels)
            except DataError as err:
                assert ml is None, f"{fault}: atomic {levels} failed where ml100k read: {err}"
                assert err.path is not None and err.line is not None and Path(
                    err.path).name in str(err), str(err)
                outcomes.append("DataError(file,line" + (",field)" if err.field else ")"))
                continue
            log.validate()
            if ml is not None:
                if levels:
                    assert _sequences(log) == expected
                else:  # one level: the same events
                    assert _without_levels(_sequences(log)) == _without_levels(expected)
                    assert set(log.behavior.tolist()) <= {1}
                for entity in ("item_ids", "user_ids"):
                    assert {_as_number(x) for x in getattr(log, entity)[1:].tolist()} == set(
                        getattr(ml, entity)[1:].tolist())
            outcomes.append("ok, as ml100k" if ml is not None else "ok, ml100k refused")
    outcome = " / ".join(outcomes)
    TALLY["atomic (RecBole; one level / rating funnel)"][fault][outcome] += 1
    event(f"{fault}: {outcome}")


# --- Amazon (S3-Rec) --------------------------------------------------------------------------

AMAZON_FAULTS = tuple(f for f in GENERIC_FAULTS if f not in ("time_missing", "unknown_behaviour"))
AMAZON_LAYOUT = Layout(sep=b" ", wrong_seps=(b",", b"\t", b";", b"  "), id_fields=(0, 1, 2))


def ref_amazon(files: dict[str, bytes], cap: int = 3) -> Expected:
    txt, attr = "Toy.txt", "Toy_item2attributes.json"
    skipped: dict[str, int] = {}
    lines = data_lines(txt, files[txt], skipped)
    parts = [ln.split() for _, ln in lines]
    for (n, _), p in zip(lines, parts, strict=True):
        if len(p) < 2:
            raise RefError(txt, n)
    users = parse_column(txt, lines, parts, 0, "user_id", as_int)
    events = []
    for (n, _), p, u in zip(lines, parts, users, strict=True):
        for pos, tok in enumerate(p[1:]):
            v = as_int(tok)
            if v is None:
                raise RefError(txt, n, "item_id")
            events.append((u, v, pos, 1))
    seen = set()
    for (n, _), u in zip(lines, users, strict=True):
        if u in seen:
            raise RefError(txt, n, "user_id")
        seen.add(u)
    raw = files[attr]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RefError(attr, raw.count(b"\n", 0, e.start) + 1) from None
    if not text.strip():
        raise RefError(attr, 1)
    try:
        pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    except json.JSONDecodeError as e:
        raise RefError(attr, e.lineno) from None
    if not isinstance(pairs, list):
        raise RefError(attr, 1)
    attrs: dict[int, list[int]] = {}
    for key, values in pairs:
        line = text.count("\n", 0, max(text.find(f'"{key}"'), 0)) + 1
        if not re.fullmatch(r"-?[0-9]+", key.strip()):
            raise RefError(attr, line, "item_id")
        item = int(key)
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63
                for v in values):
            raise RefError(attr, line, "attributes")
        if item in attrs:
            bump(skipped, "duplicate_attribute_items", 1)
        else:
            attrs[item] = values
    items = {e[1] for e in events}
    bump(skipped, "attribute_items_not_in_log", len(set(attrs) - items))
    bump(skipped, "items_without_attributes", len(items - set(attrs)))
    lens = [len(v) for i, v in attrs.items() if i in items]
    width = max(1, min(max(lens, default=0), cap))
    bump(skipped, "attributes_truncated", sum(n > width for n in lens))

    def extra(log: EventLog) -> None:
        table = log.item_features["attribute"].values[1:]
        assert table.shape[1] == width
        assert (table > 0).sum(axis=1).tolist() == [min(len(attrs.get(i, [])), width)
                                                    for i in log.item_ids[1:].tolist()]

    return Expected(sort_events(events), len(users), len(items), dict(sorted(skipped.items())),
                    {"interact": len(events)}, extra)


@st.composite
def amazon_case(draw, fault: str):
    users = draw(st.lists(st.integers(1, 10 ** 6), min_size=1, max_size=5, unique=True))
    pool = draw(st.lists(st.integers(1, 500), min_size=1, max_size=6, unique=True))
    seqs = [draw(st.lists(st.sampled_from(pool), min_size=1, max_size=8)) for _ in users]
    items = sorted({i for s in seqs for i in s})
    attrs = {i: draw(st.lists(st.integers(1, 60), max_size=5)) for i in items}
    if fault == "sparse_users":  # a user with one event, and one with none (an error)
        users.append(max(users) + 1)
        seqs.append([items[0]])
        if draw(st.booleans()):
            users.append(max(users) + 1)
            seqs.append([])
    elif fault == "long_sequence":
        rng = random.Random(draw(st.integers(0, 2 ** 32)))
        seqs[0] = seqs[0] + [rng.choice(items) for _ in range(LONG * max(map(len, seqs)))]
    elif fault == "catalogue_mismatch":
        what = draw(st.sampled_from(["extra_entry", "missing_entry", "duplicate_key"]))
        if what == "extra_entry":
            attrs[10 ** 7] = [1, 2]
        elif what == "missing_entry":
            del attrs[items[0]]
    text = Text([b" ".join(b"%d" % x for x in [u, *s]) for u, s in zip(users, seqs,
                                                                        strict=True)])
    entries = [f'"{k}": {json.dumps(v)}' for k, v in attrs.items()]
    if fault == "catalogue_mismatch" and what == "duplicate_key":
        entries.append(f'"{items[-1]}": [59]')
    json_text = ("{" + ",\n ".join(entries) + "}").encode()
    if fault == "empty_file":
        if draw(st.booleans()):
            text = Text(draw(st.sampled_from([[], [b""], [b" ", b""]])))
        else:
            json_text = draw(st.sampled_from([b"", b"\n", b"  \n"]))
    elif fault == "duplicate_events" and draw(st.booleans()):  # an item repeated in a line
        k = draw(st.sampled_from(text.data_range()))
        toks = text.lines[k].split(b" ")
        e = draw(st.integers(1, len(toks) - 1))
        text.lines[k] = b" ".join(toks[:e + 1] + toks[e:])
    elif fault == "non_utf8" and draw(st.booleans()):  # in the attribute file
        at = draw(st.integers(0, len(json_text)))
        json_text = json_text[:at] + draw(st.sampled_from(BAD_BYTES)) + json_text[at:]
    elif fault == "non_numeric_id" and draw(st.booleans()):  # an attribute key or value
        bad = draw(st.sampled_from(['"x1"', '"\u00b2"', '"1.5"', '""']))
        key = f'"{items[0]}"'
        if draw(st.booleans()):
            json_text = json_text.replace(key.encode(), bad.encode(), 1)
        else:
            json_text = json_text.replace(key.encode() + b": [", key.encode() + b": ["
                                          + draw(st.sampled_from([b'"a", ', b"true, ",
                                                                  b"1.5, ", b"1e30, ",
                                                                  b"99999999999999999999, "])),
                                          1)
    elif fault == "truncated_line" and draw(st.booleans()):  # the attribute file cut short
        json_text = json_text[:draw(st.integers(0, len(json_text) - 1))]
    elif fault not in ("none", "sparse_users", "long_sequence", "catalogue_mismatch"):
        generic_fault(draw, fault, text, AMAZON_LAYOUT)
    return {"Toy.txt": text.render(), "Toy_item2attributes.json": json_text}


@hardening(AMAZON_FAULTS)
@given(data=st.data())
def test_amazon_hardening(fault, data):
    files = data.draw(amazon_case(fault))
    check_reader("amazon", fault, files, lambda d: read_amazon(d / "Toy.txt", max_attributes=3),
                 ref_amazon)


# --- JDsearch ---------------------------------------------------------------------------------

JD_HEADER = (b"query\tcandidate_wid_list\tcandidate_label_list\thistory_qry_list\t"
             b"history_wid_list\thistory_type_list\thistory_time_list")
JD_META_HEADER = (b"wid\tname\tbrand_id\tbrand_name\tcate_id_1\tcate_name_1\tcate_id_2\t"
                  b"cate_name_2\tcate_id_3\tcate_name_3\tcate_id_4\tcate_name_4\tshop_id")
JD_LEVEL = {b"CLICK": 1, b"CART": 2, b"FLW": 2, b"ORD": 3}
JD_LAYOUT = Layout(sep=b"\t", wrong_seps=(b",", b" ", b"|"), id_fields=(1, 4), time_field=6,
                   behaviour_field=5, list_fields=frozenset({1, 2, 3, 4, 5, 6}))
JD_META_LAYOUT = Layout(sep=b"\t", wrong_seps=(b",", b" "), id_fields=(0, 2, 4, 6, 8, 10, 12))
JD_META_FIELDS = ("brand_id", "cate_id_1", "cate_id_2", "cate_id_3", "cate_id_4", "shop_id")


def _jd_list(v: bytes) -> list[bytes]:
    return v.split(b"_") if v else []


def ref_jdsearch(files: dict[str, bytes], cap: int = 3) -> Expected:
    beh, meta = "user_behavior_data.txt", "product_meta_data.txt"
    skipped: dict[str, int] = {}
    head = file_lines(files[beh])[:1]
    if not head or not head[0].strip():
        raise RefError(beh, 1)
    names = [c.decode("utf-8", "replace").split(":")[0].strip() for c in head[0].split(b"\t")]
    if names != [c.decode() for c in JD_HEADER.split(b"\t")]:
        raise RefError(beh, 1, "header")
    lines = data_lines(beh, files[beh], skipped, header=True)
    rows = split_rows(beh, lines, b"\t", 7)
    lists = [[_jd_list(r[j]) for j in range(1, 7)] for r in rows]
    for field, a, b, plus in (("candidate_label_list", 1, 0, 0), ("history_qry_list", 2, 3, 0),
                              ("history_type_list", 4, 3, 0), ("history_time_list", 5, 3, 1)):
        for (n, _), ls in zip(lines, lists, strict=True):
            if len(ls[a]) != len(ls[b]) + plus:
                raise RefError(beh, n, field)

    def each(k: int, field: str, conv) -> list[list]:
        out = []
        for (n, _), ls in zip(lines, lists, strict=True):
            vals = [conv(t) for t in ls[k]]
            if any(v is None for v in vals):
                raise RefError(beh, n, field)
            out.append(vals)
        return out

    times = each(5, "history_time_list", as_int)
    for (n, _), ts in zip(lines, times, strict=True):
        if any(t < 0 for t in ts):
            raise RefError(beh, n, "history_time_list")
    wids = each(3, "history_wid_list", as_int)
    types = each(4, "history_type_list", lambda t: JD_LEVEL.get(t))
    types_raw = [ls[4] for ls in lists]

    def query(t: bytes):
        if t == b"-1":
            return ""
        terms = t.split(b"\x18")
        return " ".join(x.decode() for x in terms) if all(x.isdigit() for x in terms) else None

    h_query = each(2, "history_qry_list", query)
    r_query = parse_column(beh, lines, rows, 0, "query", query)
    cands = each(0, "candidate_wid_list", as_int)

    def label(t: bytes):
        v = as_float(t)
        return int(v) if v is not None and v == round(v) and 0 <= v <= 3 else None

    labels = each(1, "candidate_label_list", label)
    # catalogue
    cols, idx = header_columns(meta, files[meta], b"\t", ("wid", *JD_META_FIELDS))
    mlines = data_lines(meta, files[meta], skipped, header=True)
    mrows = split_rows(meta, mlines, b"\t", len(cols))
    mids = parse_column(meta, mlines, mrows, idx[0], "wid", as_int)
    brand = None
    for k, f in zip(idx[1:], JD_META_FIELDS, strict=True):
        values = parse_column(meta, mlines, mrows, k, f, as_int)
        brand = values if brand is None else brand
    first_brand = {}
    for i, b in zip(mids, brand, strict=True):
        first_brand.setdefault(i, b)
    bump(skipped, "duplicate_item_rows", len(mids) - len(first_brand))
    events, queries = [], []
    for (n, _), w, ty, ts, q in zip(lines, wids, types, times, h_query, strict=True):
        cum = list(itertools.accumulate(ts))
        events += [(n, i, cum[e], ty[e]) for e, i in enumerate(w)]
        queries += [(n, cum[e], q[e]) for e in range(len(w))]
    items = {e[1] for e in events} | {c for cs in cands for c in cs} | set(mids)
    bump(skipped, "items_without_meta", len(items - set(mids)))
    all_queries = {q for qs in h_query for q in qs} | set(r_query)
    all_queries.discard("")
    term_lens = [len(q.split()) for q in all_queries]
    width = max(1, min(max(term_lens, default=0), cap))
    bump(skipped, "query_terms_truncated", sum(n > width for n in term_lens))
    users = [n for n, _ in lines]
    counts = collections.Counter(t for ts in types_raw for t in ts)
    order = sorted(range(len(queries)), key=lambda k: (queries[k][0], queries[k][1], k))

    def extra(log: EventLog) -> None:
        assert log.query_ids[log.query].tolist() == [queries[k][2] for k in order]
        assert log.num_queries == len(all_queries)
        r = log.requests
        assert log.user_ids[r.user].tolist() == users
        assert r.time.tolist() == [sum(ts) for ts in times]
        assert log.query_ids[r.query].tolist() == r_query
        assert r.offsets.tolist() == np.cumsum([0] + [len(c) for c in cands]).tolist()
        assert log.item_ids[r.cand_item].tolist() == [c for cs in cands for c in cs]
        assert r.cand_label.tolist() == [x for ls in labels for x in ls]
        b = log.item_features["brand"].values[1:, 0]
        assert (b > 0).tolist() == [first_brand.get(i, -1) != -1
                                    for i in log.item_ids[1:].tolist()]

    return Expected(sort_events(events), len(users), len(items), dict(sorted(skipped.items())),
                    {t.decode(): counts[t] for t in JD_LEVEL}, extra)


@st.composite
def jd_case(draw, fault: str):
    pool = draw(st.lists(st.integers(100, 10 ** 6), min_size=2, max_size=8, unique=True))
    qpool = [b"\x18".join(b"%d" % t for t in q) for q in draw(st.lists(
        st.lists(st.integers(1, 99), min_size=1, max_size=4), min_size=1, max_size=3))]
    n_users = draw(st.integers(1, 4))
    min_hist = 1 if fault != "sparse_users" else 0
    lines = []
    for u in range(n_users):
        n_hist = draw(st.integers(min_hist, 6))
        if fault == "sparse_users" and u == 0:
            n_hist = draw(st.integers(0, 1))
        if fault == "long_sequence" and u == 0:
            n_hist = LONG * 6
        rng = random.Random(draw(st.integers(0, 2 ** 32)))
        hist = [rng.choice(pool) for _ in range(n_hist)]
        types = [rng.choice(sorted(JD_LEVEL)) for _ in hist]
        hq = [rng.choice(qpool + [b"-1"]) for _ in hist]
        times = [rng.randrange(0, 5000)] + [rng.randrange(0, 100) for _ in hist]
        cands = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
        labels = [draw(st.sampled_from([b"0.0", b"1.0", b"2", b"3.0"])) for _ in cands]

        def j(xs):
            return b"_".join(xs)

        lines.append(b"\t".join([draw(st.sampled_from(qpool + [b"-1"])),
                                 j(b"%d" % c for c in cands), j(labels), j(hq),
                                 j(b"%d" % h for h in hist), j(types),
                                 j(b"%d" % t for t in times)]))
    meta_ids = list(pool)
    if fault == "catalogue_mismatch":
        what = draw(st.sampled_from(["missing_meta", "duplicate_meta", "long_query"]))
        if what == "missing_meta":
            meta_ids = meta_ids[1:]
        elif what == "duplicate_meta":
            meta_ids.insert(draw(st.integers(0, len(meta_ids))), pool[0])
        else:
            lines[0] = b"1\x182\x183\x184\x185" + lines[0][lines[0].index(b"\t"):]
    meta = [JD_META_HEADER] + [
        b"%d\tname %d\t%d\tbrand\t1\tc\t2\tc\t3\tc\t4\tc\t%d"
        % (i, i, draw(st.sampled_from([-1, 1, 2, 3])), draw(st.sampled_from([-1, 7])))
        for i in meta_ids]
    texts = {"user_behavior_data.txt": Text([JD_HEADER] + lines, header=True),
             "product_meta_data.txt": Text(meta, header=True)}
    if fault == "empty_file":
        which = draw(st.sampled_from(sorted(texts)))
        head = JD_HEADER if which.startswith("user") else JD_META_HEADER
        texts[which] = Text(draw(st.sampled_from([[], [b""], [head], [head, b"  "]])))
    elif fault == "time_out_of_order":  # an interval made negative (JDsearch stores intervals)
        generic_fault(draw, "negative_id", texts["user_behavior_data.txt"],
                      dataclasses.replace(JD_LAYOUT, id_fields=(6,)))
    elif fault == "time_missing" and draw(st.booleans()):  # one interval too few
        t = texts["user_behavior_data.txt"]
        k = draw(st.sampled_from(t.data_range()))
        t.lines[k] = t.lines[k].rsplit(b"_", 1)[0] if b"_" in t.lines[k].rsplit(
            b"\t", 1)[1] else t.lines[k].rsplit(b"\t", 1)[0] + b"\t"
    elif fault == "duplicate_events" and draw(st.booleans()):  # a history event repeated
        t = texts["user_behavior_data.txt"]
        k = draw(st.sampled_from(t.data_range()))
        cols = t.lines[k].split(b"\t")
        if cols[4]:
            e = draw(st.integers(0, cols[4].count(b"_")))
            for j in (3, 4, 5):
                xs = cols[j].split(b"_")
                cols[j] = b"_".join(xs[:e + 1] + xs[e:])
            ts = cols[6].split(b"_")
            cols[6] = b"_".join(ts[:e + 1] + [b"0"] + ts[e + 1:])  # same time as the original
            t.lines[k] = b"\t".join(cols)
    elif fault == "non_utf8" and draw(st.booleans()):  # free text of the catalogue
        t = texts["product_meta_data.txt"]
        k = draw(st.sampled_from(t.data_range()))
        parts = t.lines[k].split(b"\t")
        parts[draw(st.sampled_from([1, 3, 5]))] += draw(st.sampled_from(BAD_BYTES))
        t.lines[k] = b"\t".join(parts)
    elif fault in ("wrong_separator", "wrong_column_count", "non_numeric_id", "negative_id",
                   "blank_lines", "truncated_line") and draw(st.booleans()):
        generic_fault(draw, fault, texts["product_meta_data.txt"], JD_META_LAYOUT)
    elif fault not in ("none", "sparse_users", "long_sequence", "catalogue_mismatch"):
        generic_fault(draw, fault, texts["user_behavior_data.txt"], JD_LAYOUT,
                      bad_behaviours=(b"BUY", b"click", b"", b"CLICK\xff", b"ORD ", b"-1"))
    return {k: t.render() for k, t in texts.items()}


@hardening(GENERIC_FAULTS)
@given(data=st.data())
def test_jdsearch_hardening(fault, data):
    files = data.draw(jd_case(fault))
    check_reader("jdsearch", fault, files, lambda d: read_jdsearch(d, max_query_terms=3),
                 ref_jdsearch)


# --- context builder ----------------------------------------------------------------------------

CONTEXT_FAULTS = ("none", "long_sequence", "sparse_users", "time_out_of_order",
                  "duplicate_events")


def _ref_history(items: list[int], behs: list[int], length: int) -> tuple[list, list]:
    seen, out = set(), []
    for i, b in zip(reversed(items), reversed(behs), strict=True):
        if i not in seen:
            seen.add(i)
            out.append((i, b))
            if len(out) == length:
                break
    out.reverse()
    pad = [0] * (length - len(out))
    return pad + [i for i, _ in out], pad + [b for _, b in out]


@st.composite
def context_case(draw, fault: str):
    ih_len = draw(st.integers(2, 5))
    n_users = draw(st.integers(1, 5))
    n_items = draw(st.integers(1, 12))
    rng = random.Random(draw(st.integers(0, 2 ** 32)))
    sizes = [draw(st.integers(3, 8)) for _ in range(n_users)]
    if fault == "sparse_users":
        sizes = [draw(st.sampled_from([0, 1, 2, 3, 4])) for _ in range(n_users)]
    elif fault == "long_sequence":
        sizes[0] = LONG * ih_len
    rows = []  # (user, item, time, behaviour)
    for u, n in enumerate(sizes, 1):
        t = rng.randrange(0, 10 ** 6)
        for _ in range(n):
            t += rng.choice([0, 0, 1, 60, 3600, 86400])  # ties included
            rows.append((u, rng.randint(1, n_items), t, rng.randint(1, 3)))
    if fault == "time_out_of_order":
        rng.shuffle(rows)
    elif fault == "duplicate_events" and rows:
        for _ in range(draw(st.integers(1, 5))):
            rows.insert(rng.randrange(len(rows) + 1), rows[rng.randrange(len(rows))])
    pa = draw(st.sampled_from([(), ("buy",), ("view", "buy")]))
    timestamps = draw(st.booleans())
    return ih_len, n_users, n_items, rows, pa, timestamps


@hardening(CONTEXT_FAULTS)
@given(data=st.data())
def test_context_builder_hardening(fault, data):
    ih_len, n_users, n_items, rows, pa, timestamps = data.draw(context_case(fault))
    if not timestamps:  # order-only logs: time = position in the user's sequence
        per_user: dict[int, int] = collections.Counter()
        rows = sorted(rows, key=lambda r: (r[0], r[2]))
        fixed = []
        for u, i, _, b in rows:
            fixed.append((u, i, per_user[u], b))
            per_user[u] += 1
        rows = fixed
    arr = np.array(rows, np.int64).reshape(-1, 4)
    log = EventLog(dataset="toy", user=arr[:, 0].astype(np.int32),
                   item=arr[:, 1].astype(np.int32), time=arr[:, 2],
                   behavior=arr[:, 3].astype(np.int8), query=np.zeros(len(rows), np.int32),
                   behaviors=("view", "like", "buy"), has_timestamps=timestamps,
                   item_features={"item_id": identity_table(n_items)},
                   user_features={"user_id": identity_table(n_users)})
    log.validate()
    cfg = ContextConfig(ih_max_len=ih_len, pa_groups=pa, pa_group_size=3, pool_window=3,
                        tasks=("window", "next", "buy"))
    builder = ContextBuilder(log, cfg)
    # the reference: per user, events by time with ties in input order
    seqs: dict[int, list[tuple]] = collections.defaultdict(list)
    for _k, (u, i, t, b) in sorted(enumerate(rows), key=lambda kr: (kr[1][0], kr[1][2], kr[0])):
        seqs[u].append((i, t, b))
    sizes = [len(seqs[u]) for u in range(1, n_users + 1)]
    want_skipped = {"users_without_events": sizes.count(0),
                    "users_with_fewer_than_3_events": sum(0 < n < 3 for n in sizes)}
    assert builder.skipped == {k: v for k, v in want_skipped.items() if v}
    for split in ("train", "validation", "test"):
        got = collections.Counter()
        for key, ex in builder.examples(split):
            u = int(ex["user"])
            seq = seqs[u]
            t = int(key.split("-")[1])
            got[u] += 1
            items = [s[0] for s in seq]
            behs = [s[2] for s in seq]
            ih, ihb = _ref_history(items[:t], behs[:t], ih_len)
            assert ex["ih_item"].tolist() == ih and ex["ih_behavior"].tolist() == ihb
            assert int(ex["target"]) == items[t] and int(ex["time"]) == seq[t][1]
            assert ex["pa_item"].shape == (len(pa), 3)
            n = len(seq)
            stop = min(t + 3, n - 2) if split == "train" else t + 1
            assert ex["pool_item"].tolist() == items[t:stop] + [0] * (3 - (stop - t))
            buy = [float(b >= 3) for b in behs[t:stop]] + [0.0] * (3 - (stop - t))
            assert ex["pool_label"][:, 2].tolist() == buy
            if split != "train":
                assert ex["exclude"].tolist() == sorted(set(items[:t]))
        want = {u: (max(n - 3, 0) if split == "train" else int(n >= 3))
                for u, n in enumerate(sizes, 1)}
        assert dict(got) == {u: c for u, c in want.items() if c}
    event(f"{fault}: ok")
    outcome = ("ok, skipped " + "+".join(sorted(builder.skipped))) if builder.skipped else "ok"
    TALLY["context builder"][fault][outcome] += 1
