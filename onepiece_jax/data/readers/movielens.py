"""MovieLens-100K reader: RecBole atomic files or the original GroupLens files.

Funnel (weak → strong): ``watched`` (any rating), ``rated>=4``, ``rated5``; an event's level is
the strongest one its rating reaches. ``raw_behavior_counts`` keeps the events per rating value.

Item features: ``genre`` (multi-valued, width = most genres of one movie), ``year`` (release year
in ``year_bucket``-year buckets; a missing or unparsable year is 0 and counted in
``skipped["items_without_year"]``). User features: ``age`` (buckets <18, 18-24, 25-34, 35-44,
45-49, 50-55, 56+), ``gender``, ``occupation``. The id universe is every id in the ratings plus
every id in the catalogue files (a movie nobody rated is still a retrievable item); ids missing
from a catalogue get 0 features (``skipped["items_without_meta"]``, ``"users_without_meta"``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from onepiece_jax.data.events import DataError, EventLog, identity_table
from onepiece_jax.data.readers import _common as c

BEHAVIORS = ("watched", "rated>=4", "rated5")
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])  # bucket b covers [edge[b-1], edge[b])
# GroupLens u.item genre flag order (u.genre); the same names RecBole's ``class`` column uses.
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
RECBOLE = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
GROUPLENS = ("u.data", "u.item", "u.user")
TIME_PRECISIONS = ("exact", "recbole")  # event order: exact time, or RecBole's (recbole_times)


@dataclasses.dataclass
class _Ratings:
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray


@dataclasses.dataclass
class _Movies:
    ids: np.ndarray
    year: np.ndarray  # 0 = unknown
    genre_len: np.ndarray
    genre_flat: np.ndarray  # S genre names


@dataclasses.dataclass
class _People:
    ids: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray


def read_ml100k(path: str | Path, *, year_bucket: int = 5,
                time_precision: str = "exact") -> EventLog:
    """Reads a folder holding either the RecBole or the GroupLens MovieLens-100K files.

    ``time_precision="recbole"`` orders events as RecBole 1.2.1 does (see :func:`recbole_times`);
    on MovieLens-100K that moves 5 validation and 4 test targets of the 943 users against exact
    time order.
    """
    if time_precision not in TIME_PRECISIONS:
        raise ValueError(f"time_precision={time_precision!r}: expected one of {TIME_PRECISIONS}")
    folder = Path(path)
    skipped: dict[str, int] = {}
    if (folder / RECBOLE[0]).exists():
        files = [c.require_file(folder / n, "MovieLens file") for n in RECBOLE]
        ratings = _recbole_ratings(files[0], skipped)
        movies = _recbole_movies(files[1], skipped)
        people = _recbole_people(files[2], skipped)
    elif (folder / GROUPLENS[0]).exists():
        files = [c.require_file(folder / n, "MovieLens file") for n in GROUPLENS]
        ratings = _ratings(files[0], skipped, sep=b"\t", cols=(0, 1, 2, 3), ncols=4, header=False)
        movies = _grouplens_movies(files[1], skipped)
        people = _people(files[2], skipped, sep=b"|", cols=(0, 1, 2, 3), ncols=5, header=False)
    else:
        raise DataError(f"no MovieLens-100K files: need {'/'.join(RECBOLE)} (RecBole) or "
                        f"{'/'.join(GROUPLENS)} (GroupLens)", path=str(folder))
    if time_precision == "recbole":
        ratings.time = recbole_times(ratings.time)
    return _assemble(ratings, movies, people, skipped, year_bucket)


def recbole_times(time: np.ndarray) -> np.ndarray:
    """int64[E] timestamps whose ties are RecBole's: its ml-100k config min-max normalises every
    float field (``normalize_all: True``, the timestamp included) and keeps it as float32, so
    events whose normalised times round to the same float32 (about a second apart on
    MovieLens-100K) tie and keep their file order in its stable sort. Each such group gets its
    earliest timestamp, so the order is RecBole's and no time moves by more than the tie.
    """
    if time.size == 0:
        return time
    lo, hi = int(time.min()), int(time.max())
    key = ((time - lo) / max(hi - lo, 1)).astype(np.float32)
    groups, inverse = np.unique(key, return_inverse=True)
    earliest = np.full(groups.size, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(earliest, inverse, time)
    return earliest[inverse]


def _ratings(path: Path, skipped: dict[str, int], *, sep: bytes, cols: tuple[int, ...],
             ncols: int, header: bool) -> _Ratings:
    """Streams the rating file; ``cols`` = positions of user, item, rating, timestamp."""
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for nums, table in c.iter_columns(path, sep, ncols, skipped, header=header):
        parts[0].append(c.to_int(table[:, cols[0]], nums, path, "user_id"))
        parts[1].append(c.to_int(table[:, cols[1]], nums, path, "item_id"))
        parts[2].append(c.to_float(table[:, cols[2]], nums, path, "rating"))
        parts[3].append(c.to_time(table[:, cols[3]], nums, path, "timestamp"))
    return _Ratings(*(np.concatenate(p) for p in parts))


def _people(path: Path, skipped: dict[str, int], *, sep: bytes, cols: tuple[int, ...],
            ncols: int, header: bool) -> _People:
    """User catalogue; ``cols`` = positions of user id, age, gender, occupation."""
    nums, t = c.read_columns(path, sep, ncols, skipped, header=header)
    keep = c.first_rows(t[:, cols[0]], skipped, "duplicate_user_rows")
    nums, t = nums[keep], t[keep]
    return _People(ids=c.to_int(t[:, cols[0]], nums, path, "user_id"),
                   age=c.to_int(t[:, cols[1]], nums, path, "age"),
                   gender=np.char.strip(t[:, cols[2]]), occupation=np.char.strip(t[:, cols[3]]))


def _recbole_ratings(path: Path, skipped: dict[str, int]) -> _Ratings:
    names = c.read_header(path, b"\t")
    cols = tuple(c.column_index(names, n, path) for n in ("user_id", "item_id", "rating",
                                                           "timestamp"))
    return _ratings(path, skipped, sep=b"\t", cols=cols, ncols=len(names), header=True)


def _recbole_people(path: Path, skipped: dict[str, int]) -> _People:
    names = c.read_header(path, b"\t")
    cols = tuple(c.column_index(names, n, path) for n in ("user_id", "age", "gender",
                                                           "occupation"))
    return _people(path, skipped, sep=b"\t", cols=cols, ncols=len(names), header=True)


def _recbole_movies(path: Path, skipped: dict[str, int]) -> _Movies:
    names = c.read_header(path, b"\t")
    cols = [c.column_index(names, n, path) for n in ("item_id", "release_year", "class")]
    nums, t = c.read_columns(path, b"\t", len(names), skipped, header=True)
    keep = c.first_rows(t[:, cols[0]], skipped, "duplicate_item_rows")
    nums, t = nums[keep], t[keep]
    genres = [g.split() for g in t[:, cols[2]].tolist()]
    return _Movies(ids=c.to_int(t[:, cols[0]], nums, path, "item_id"),
                   year=_years(t[:, cols[1]].tolist(), skipped),
                   genre_len=np.array([len(g) for g in genres], np.int64),
                   genre_flat=np.array([x for g in genres for x in g], dtype="S"))


def _grouplens_movies(path: Path, skipped: dict[str, int]) -> _Movies:
    """u.item: id | title | release date (dd-Mon-yyyy) | video date | url | 19 genre flags."""
    nums, t = c.read_columns(path, b"|", 5 + len(GENRES), skipped)
    keep = c.first_rows(t[:, 0], skipped, "duplicate_item_rows")
    nums, t = nums[keep], t[keep]
    flags = np.stack([c.to_int(t[:, 5 + g], nums, path, f"genre:{name}")
                      for g, name in enumerate(GENRES)], axis=1)
    bad = np.argwhere((flags != 0) & (flags != 1))
    if bad.size:
        r, g = bad[0]
        raise DataError(f"genre flag must be 0 or 1, got {flags[r, g]}", path=str(path),
                        line=int(nums[r]), field=f"genre:{GENRES[g]}")
    rows, which = np.nonzero(flags)
    return _Movies(ids=c.to_int(t[:, 0], nums, path, "item_id"),
                   year=_years([d.strip()[-4:] for d in t[:, 2].tolist()], skipped),
                   genre_len=np.bincount(rows, minlength=len(t)).astype(np.int64),
                   genre_flat=np.array(GENRES, dtype="S")[which])


def _years(tokens: list[bytes], skipped: dict[str, int]) -> np.ndarray:
    """Release years; blanks and placeholders (the RecBole file spells one "unkonwn") are 0."""
    years = np.array([int(y) if y.strip().isdigit() else 0 for y in tokens], np.int64)
    c.bump(skipped, "items_without_year", int((years == 0).sum()))
    return years


def _assemble(r: _Ratings, m: _Movies, p: _People, skipped: dict[str, int],
              year_bucket: int) -> EventLog:
    users = c.sorted_vocab(r.user, p.ids)
    items = c.sorted_vocab(r.item, m.ids)
    c.bump(skipped, "users_without_meta", np.setdiff1d(users, p.ids).size)
    c.bump(skipped, "items_without_meta", np.setdiff1d(items, m.ids).size)
    behavior = np.where(r.rating >= 5, 3, np.where(r.rating >= 4, 2, 1))
    rating_values, rating_counts = np.unique(r.rating, return_counts=True)
    item_rows, user_rows = c.dense(items, m.ids), c.dense(users, p.ids)
    genre, _ = c.ragged_table(items.size, item_rows, m.genre_len, m.genre_flat, len(GENRES))
    age_bucket = np.searchsorted(AGE_EDGES, p.age, side="right") + 1
    return c.build_log(
        dataset="ml100k", user=c.dense(users, r.user), item=c.dense(items, r.item), time=r.time,
        behavior=behavior, query=None, behaviors=BEHAVIORS, has_timestamps=True,
        item_features={
            "item_id": identity_table(items.size), "genre": genre,
            "year": c.entity_table(items.size, item_rows, m.year // year_bucket * year_bucket,
                                   missing=0)},
        user_features={
            "user_id": identity_table(users.size),
            "age": c.entity_table(users.size, user_rows, age_bucket),
            "gender": c.entity_table(users.size, user_rows, p.gender),
            "occupation": c.entity_table(users.size, user_rows, p.occupation)},
        item_ids=c.with_padding_row(items), user_ids=c.with_padding_row(users),
        skipped=skipped,
        raw_behavior_counts={f"rating={v:g}": int(n)
                             for v, n in zip(rating_values, rating_counts, strict=True)})
