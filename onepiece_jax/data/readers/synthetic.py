"""Synthetic search logs in the JDsearch format, with structure each OnePiece part can exploit.

``generate_synthetic`` writes ``user_behavior_data.txt`` and ``product_meta_data.txt`` (read back
with the ``jdsearch`` reader). It streams: the catalogue is written in item chunks and the
behaviour file in user chunks, each chunk generated with vectorised numpy, so 1M users × 10M
items stays within a few GiB (per-item arrays are ~20 bytes/item; a user chunk is transient).

What is planted (all knobs in :class:`SynthConfig`):

- **Category tree** of ``category_fanout`` levels (cate_1 … cate_4); leaf sizes are skewed.
  Brands belong to one cate_2 node, shops to one brand; brand, shop and item each get a latent
  quality that raises click / cart / order odds, so side features carry signal.
- **Users** have a home cate_2 node and ``prefs_per_user`` weighted leaf categories in it; a
  session's category is a preferred leaf, or with ``explore_rate`` any leaf.
- **Queries** are tied to categories: a leaf's queries are the term of its cate_2 node, the term
  of the leaf and (for variants > 0) a modifier term, so query terms reveal the category.
  ``no_query_rate`` of history sessions are query-less (feed) sessions, written ``-1``.
  Control switch ``query_intent=False``: each query names a random leaf, independent of the
  session's leaf (the user's real intent, which still drives clicks), so queries — and anchors
  keyed by query — carry no intent; the experiments use it to check that the SD gain vanishes.
- **Impressions**: each session shows ``candidates`` items, mostly from the session's leaf, some
  from a sibling leaf (same cate_3) or any leaf (``candidate_mix``). Within a leaf, items are drawn
  by a power-law popularity whose ranking rotates over time (``drift``: the fraction of a leaf
  the popularity peak travels over the horizon), so popularity drifts and recency matters.
- **Funnel** impression → click → cart → order: click odds rise with the user's preference for
  the item's leaf, a match with the session's leaf (the one its query names) and the qualities;
  cart | click and order | cart have their own base rates. ``follow_rate`` of carts are written
  as FLW.
- **Time**: every user starts at an absolute offset on one shared clock (the first entry of
  ``history_time_list``, where the real data has 0), sessions follow with exponential gaps and the
  user's last session is the test search (its candidates and labels are the ranking request).
  Every user has at least one history event. By default users start in the first half of the
  horizon, so the users who search last are the most active ones: a time split of the requests
  trains on short histories and tests on long ones. ``end_aligned=True`` places each user's
  last search uniformly in the second half instead, independent of their activity.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onepiece_jax.data.readers.jdsearch import HEADER, TERM_SEP, WORLD_FILE, is_world

BEHAVIOR_FILE = "user_behavior_data.txt"
META_FILE = "product_meta_data.txt"
META_HEADER = ("wid", "name", "brand_id", "brand_name", "cate_id_1", "cate_name_1", "cate_id_2",
               "cate_name_2", "cate_id_3", "cate_name_3", "cate_id_4", "cate_name_4", "shop_id")
TYPE_NAMES = np.array([b"", b"CLICK", b"CART", b"ORD", b"FLW"])  # by level, FLW appended
LABEL_NAMES = np.array([b"0.0", b"1.0", b"2.0", b"3.0"])


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; the defaults give a learnable but not trivial dataset."""

    category_fanout: tuple[int, int, int, int] = (4, 3, 3, 3)
    leaf_size_sigma: float = 0.8  # lognormal spread of items per leaf category
    brands_per_cate2: int = 8
    shops_per_brand: int = 3
    brand_quality: float = 0.6  # std of the latent brand/shop/item qualities (logit units)
    shop_quality: float = 0.3
    item_quality: float = 0.5
    missing_brand_rate: float = 0.02  # catalogue rows written with brand -1 (missing)
    prefs_per_user: int = 3
    pref_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    explore_rate: float = 0.15
    mean_sessions: float = 8.0  # history sessions per user (geometric), plus one test search
    max_sessions: int = 100
    no_query_rate: float = 0.3
    queries_per_leaf: int = 3
    modifier_terms: int = 50
    candidates: int = 20
    candidate_mix: tuple[float, float, float] = (0.6, 0.2, 0.2)  # same leaf, sibling, any
    popularity_power: float = 3.0  # rank = size * u**power: larger = more head-heavy
    drift: float = 0.5
    click_rate: float = 0.01  # base click probability of an unremarkable impression
    pref_boost: float = 2.0  # click logit added when the item's leaf is a user preference
    query_boost: float = 1.0  # click logit added in a search session for items of its leaf
    query_intent: bool = True  # False: queries name a random leaf (control: no query intent)
    cart_rate: float = 0.2
    order_rate: float = 0.2
    follow_rate: float = 0.1
    epoch: int = 1_700_000_000  # shared clock origin (seconds)
    horizon: int = 60 * 86_400
    start_spread: float = 0.5  # users start uniformly in the first half of the horizon
    # False: users start uniformly in the first start_spread of the horizon, so a user with more
    # sessions searches last later and a time split of the requests is a split by activity
    # (train: short histories, test: long ones). True: every user's last search falls uniformly
    # in the last start_spread of the horizon, whatever their number of sessions.
    end_aligned: bool = False
    event_gap: float = 30.0  # mean seconds between behaviours inside one session

    @property
    def num_leaves(self) -> int:
        return math.prod(self.category_fanout)

    @classmethod
    def from_overrides(cls, pairs: Iterable[str]) -> SynthConfig:
        """The defaults with ``NAME=VALUE`` pairs applied, as the CLI's ``--set`` gives them,
        parsed by the rules of ``--config.KEY=VALUE`` overrides; an unknown knob or a badly
        typed value is a ``ConfigError`` that names it."""
        from onepiece_jax.config import ConfigError, coerce_value, unknown_key

        prefix, names = "synthetic knob ", [f.name for f in dataclasses.fields(cls)]
        knobs = {}
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            if not sep:
                raise ConfigError(f"{prefix}{pair!r}: expected NAME=VALUE")
            if name not in names:
                raise unknown_key(name, names, prefix)
            knobs[name] = coerce_value(name, getattr(cls, name), raw, prefix)
        return cls(**knobs)


def generate_synthetic(out_dir: str | Path, num_users: int, num_items: int, seed: int = 0,
                       config: SynthConfig | None = None, chunk_users: int = 20_000) -> Path:
    """Writes the two JDsearch files into ``out_dir`` and returns it. Deterministic in
    (``seed``, ``config``, ``chunk_users``)."""
    cfg = config or SynthConfig()
    _check(cfg, num_users, num_items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = _World(cfg, num_items, seed)
    world.write_catalogue(out / META_FILE)
    with open(out / BEHAVIOR_FILE, "wb") as f:
        f.write(b"\t".join(h.encode() for h in HEADER) + b"\n")
        for _, n, rng in _user_chunks(num_users, chunk_users, seed):
            f.write(world.user_lines(rng, n))
    knobs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
             if getattr(cfg, f.name) != f.default}
    (out / WORLD_FILE).write_text(json.dumps(
        {"users": num_users, "items": num_items, "seed": seed, "chunk_users": chunk_users,
         "knobs": knobs}, indent=1))
    return out


def world_arguments(folder: str | Path) -> dict[str, Any]:
    """The arguments ``generate_synthetic`` wrote ``folder`` with (from its ``synth.json``), as
    keyword arguments of ``simulate_requests``: what replays the world's requests."""
    path = Path(folder) / WORLD_FILE
    if not is_world(folder):
        raise FileNotFoundError(f"{path} not found: {folder} is not a world written by "
                                "generate_synthetic (`onepiece data synth`)")
    stored = json.loads(path.read_text())
    knobs = stored.get("knobs", {})
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise ValueError(f"{path}: unknown synthetic knobs {unknown}")
    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()}
    try:
        return {"num_users": int(stored["users"]), "num_items": int(stored["items"]),
                "seed": int(stored["seed"]), "config": SynthConfig(**knobs),
                "chunk_users": int(stored.get("chunk_users", 20_000))}
    except KeyError as e:
        raise ValueError(f"{path}: missing field {e.args[0]!r}") from None


def _user_chunks(num_users: int, chunk_users: int,
                 seed: int) -> Iterator[tuple[int, int, np.random.Generator]]:
    """(first user, users, generator) per chunk: each chunk's draws depend only on its index."""
    for chunk, start in enumerate(range(0, num_users, chunk_users)):
        yield start, min(chunk_users, num_users - start), np.random.default_rng([seed, 1, chunk])


def simulate_requests(num_users: int, num_items: int, seed: int = 0,
                      config: SynthConfig | None = None,
                      chunk_users: int = 20_000) -> Iterator[dict[str, np.ndarray]]:
    """The ranking requests of the logs ``generate_synthetic`` writes with the same arguments,
    with the generator's own odds: per user chunk, every test impression's ``label`` (as
    written), ``request`` (global user index) and the terms of :class:`FunnelOdds`. It replays
    the same random draws, so it matches the file without writing it."""
    cfg = config or SynthConfig()
    _check(cfg, num_users, num_items)
    world = _World(cfg, num_items, seed)
    for start, n, rng in _user_chunks(num_users, chunk_users, seed):
        sim = world.simulate(rng, n)
        test = sim["is_test"][sim["c_sess"]]
        user = np.repeat(np.arange(n), sim["sessions"])[sim["c_sess"][test]]
        odds = sim["odds"]
        yield {"label": _label(sim["level"][test]).astype(np.int8), "request": start + user,
               **{f.name: getattr(odds, f.name)[test] for f in dataclasses.fields(odds)}}


def _check(cfg: SynthConfig, num_users: int, num_items: int) -> None:
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if num_items < 2 * cfg.num_leaves:
        raise ValueError(f"num_items must be >= {2 * cfg.num_leaves} (2 per leaf category of "
                         f"category_fanout {cfg.category_fanout}), got {num_items}")
    if len(cfg.pref_weights) != cfg.prefs_per_user:
        raise ValueError("pref_weights needs one weight per preferred leaf (prefs_per_user)")


def _segment_cumsum(values: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every segment (consecutive runs of ``lens``, may be 0)."""
    cum = np.concatenate([[0], np.cumsum(values)])
    return cum[1:] - np.repeat(cum[np.cumsum(lens) - lens], lens)


def _ragged_join(tokens: np.ndarray, lens: np.ndarray, sep: bytes) -> list[bytes]:
    """Joins consecutive runs of byte tokens into one bytes value per run."""
    toks = tokens.tolist()
    ends = np.cumsum(lens).tolist()
    starts = [0, *ends[:-1]]
    return [sep.join(toks[s:e]) for s, e in zip(starts, ends, strict=True)]


@dataclasses.dataclass(frozen=True)
class FunnelOdds:
    """The latent terms of each impression's funnel odds: the generator's ground truth, kept
    apart so the ranking ceiling can score candidates with all of them or some."""

    liked: np.ndarray  # bool: the item's leaf is one of the user's preferred leaves
    on_query: np.ndarray  # bool: a search session, and the item is of the leaf it is about
    side_quality: np.ndarray  # brand + shop quality (logit units), visible in side features
    item_quality: np.ndarray  # the item's own quality, learnable only from its id

    def click_logit(self, cfg: SynthConfig) -> np.ndarray:
        return (_logit(cfg.click_rate) + cfg.pref_boost * self.liked
                + cfg.query_boost * self.on_query + (self.side_quality + self.item_quality))

    def step_logit(self, cfg: SynthConfig, step: str) -> np.ndarray:
        """Logit of ``cart`` given a click, or of ``order`` given a cart."""
        rate = {"cart": cfg.cart_rate, "order": cfg.order_rate}[step]
        return _logit(rate) + 0.5 * (self.side_quality + self.item_quality)


class _World:
    """The catalogue (category tree, brands, shops, qualities, leaf-sorted item slots) and the
    per-user-chunk session simulator. Items live in *slots* sorted by leaf category; a random
    permutation gives each slot its item id, so ids do not reveal the category."""

    def __init__(self, cfg: SynthConfig, num_items: int, seed: int):
        self.cfg = cfg
        rng = np.random.default_rng([seed, 0])
        f1, f2, f3, f4 = cfg.category_fanout
        leaves = cfg.num_leaves
        share = rng.lognormal(0.0, cfg.leaf_size_sigma, leaves)
        extra = np.floor(share / share.sum() * (num_items - 2 * leaves)).astype(np.int64)
        extra[: num_items - 2 * leaves - int(extra.sum())] += 1
        self.leaf_size = 2 + extra
        self.leaf_start = np.cumsum(self.leaf_size) - self.leaf_size
        self.leaf_p = self.leaf_size / num_items
        self.slot_leaf = np.repeat(np.arange(leaves, dtype=np.int32), self.leaf_size)
        self.slot_item = (rng.permutation(num_items) + 1).astype(np.int32)  # raw wid per slot
        n_cate2 = f1 * f2
        slot_cate2 = self.slot_leaf // (f3 * f4)
        brand_rank = np.floor(cfg.brands_per_cate2 * rng.random(num_items) ** 2).astype(np.int32)
        self.slot_brand = slot_cate2 * cfg.brands_per_cate2 + brand_rank  # 0-based
        self.slot_shop = (self.slot_brand * cfg.shops_per_brand
                          + rng.integers(cfg.shops_per_brand, size=num_items, dtype=np.int32))
        self.brand_q = rng.normal(0, cfg.brand_quality, n_cate2 * cfg.brands_per_cate2)
        self.shop_q = rng.normal(0, cfg.shop_quality, self.brand_q.size * cfg.shops_per_brand)
        self.item_q = rng.normal(0, cfg.item_quality, num_items).astype(np.float32)
        self.brand_missing = rng.random(num_items) < cfg.missing_brand_rate
        # query term ids: one per cate_2 node, one per leaf, plus shared modifiers
        self.term_cate2 = 1 + np.arange(n_cate2)
        self.term_leaf = 1 + n_cate2 + np.arange(leaves)
        term_mod = 1 + n_cate2 + leaves + np.arange(cfg.modifier_terms)
        queries = []
        for leaf in range(leaves):
            base = [self.term_cate2[leaf // (f3 * f4)], self.term_leaf[leaf]]
            for v in range(cfg.queries_per_leaf):
                terms = base + ([term_mod[(leaf * 7 + v) % cfg.modifier_terms]] if v else [])
                queries.append(TERM_SEP.join(str(t).encode() for t in terms))
        self.query_text = np.array(queries)  # index leaf * queries_per_leaf + variant

    def write_catalogue(self, path: Path, chunk: int = 1_000_000) -> None:
        """The product meta file, in slot order; names are the leaf's query terms."""
        f1, f2, f3, f4 = self.cfg.category_fanout
        leaf_name = self.query_text[:: self.cfg.queries_per_leaf]
        with open(path, "wb") as f:
            f.write(b"\t".join(h.encode() for h in META_HEADER) + b"\n")
            for lo in range(0, self.slot_leaf.size, chunk):
                sl = slice(lo, lo + chunk)
                leaf = self.slot_leaf[sl].astype(np.int64)
                brand = np.where(self.brand_missing[sl], -1, self.slot_brand[sl] + 1)
                cates = [leaf // (f2 * f3 * f4), leaf // (f3 * f4), leaf // f4, leaf]
                cols = [self.slot_item[sl].astype("S"), leaf_name[leaf], brand.astype("S"),
                        np.where(brand > 0, np.char.add(b"b", brand.astype("S")), b"")]
                for level, cate in enumerate(cates):
                    cate_id = (cate + 1 + 1_000_000 * level).astype("S")
                    cols += [cate_id, np.char.add(b"c", cate_id)]
                cols.append((self.slot_shop[sl] + 1).astype("S"))
                rows = zip(*(col.tolist() for col in cols), strict=True)
                f.write(b"".join(b"\t".join(row) + b"\n" for row in rows))

    def _draw_items(self, rng: np.random.Generator, leaf: np.ndarray,
                    t: np.ndarray) -> np.ndarray:
        """Slots drawn by drifting popularity inside each leaf at times ``t``."""
        cfg = self.cfg
        size, start = self.leaf_size[leaf], self.leaf_start[leaf]
        rank = np.floor(size * rng.random(leaf.size) ** cfg.popularity_power).astype(np.int64)
        shift = np.floor(cfg.drift * (t - cfg.epoch) / cfg.horizon * size).astype(np.int64)
        return start + (rank + shift) % size

    def simulate(self, rng: np.random.Generator, n: int) -> dict[str, Any]:
        """Simulates ``n`` users: their sessions, impressions, funnel levels and click odds."""
        cfg = self.cfg
        f1, f2, f3, f4 = cfg.category_fanout
        leaves = cfg.num_leaves
        # users: home cate_2 node and weighted preferred leaves inside it
        home = rng.integers(f1 * f2, size=n)
        prefs = home[:, None] * (f3 * f4) + rng.integers(f3 * f4, size=(n, cfg.prefs_per_user))
        sessions = np.minimum(rng.geometric(1 / cfg.mean_sessions, n), cfg.max_sessions) + 1
        s_user = np.repeat(np.arange(n), sessions)
        n_s = s_user.size
        is_test = np.zeros(n_s, bool)
        is_test[np.cumsum(sessions) - 1] = True
        gap_mean = cfg.horizon * (1 - cfg.start_spread) / cfg.mean_sessions
        gaps = 60 + rng.exponential(gap_mean, n_s)
        gaps[np.cumsum(sessions) - sessions] = 0
        offset = rng.uniform(0, cfg.start_spread * cfg.horizon, n)
        elapsed = _segment_cumsum(gaps, sessions)
        if cfg.end_aligned:
            start = cfg.epoch + cfg.horizon - offset - elapsed[np.cumsum(sessions) - 1]
        else:
            start = cfg.epoch + offset
        s_time = (start[s_user] + elapsed).astype(np.int64)
        pick = rng.choice(cfg.prefs_per_user, size=n_s, p=np.asarray(cfg.pref_weights))
        s_leaf = np.where(rng.random(n_s) < cfg.explore_rate,
                          rng.choice(leaves, size=n_s, p=self.leaf_p), prefs[s_user, pick])
        has_query = is_test | (rng.random(n_s) >= cfg.no_query_rate)
        q_leaf = s_leaf if cfg.query_intent else rng.choice(leaves, size=n_s, p=self.leaf_p)
        s_query = np.where(has_query, q_leaf * cfg.queries_per_leaf
                           + rng.integers(cfg.queries_per_leaf, size=n_s), -1)
        # impressions
        c_sess = np.repeat(np.arange(n_s), cfg.candidates)
        source = rng.choice(3, size=c_sess.size, p=np.asarray(cfg.candidate_mix))
        c_leaf = s_leaf[c_sess]
        sib = np.flatnonzero(source == 1)
        c_leaf[sib] += rng.integers(f4, size=sib.size) - c_leaf[sib] % f4
        anywhere = np.flatnonzero(source == 2)
        c_leaf[anywhere] = rng.choice(leaves, size=anywhere.size, p=self.leaf_p)
        c_slot = self._draw_items(rng, c_leaf, s_time[c_sess])
        # one impression per (session, item); draws are iid, so draw order is a random order
        _, first = np.unique(c_sess.astype(np.int64) * self.slot_leaf.size + c_slot,
                             return_index=True)
        keep = np.sort(first)
        c_sess, c_slot = c_sess[keep], c_slot[keep]
        c_leaf, c_user = self.slot_leaf[c_slot], s_user[c_sess]
        odds = FunnelOdds(liked=(prefs[c_user] == c_leaf[:, None]).any(axis=1),
                          on_query=has_query[c_sess] & (s_leaf[c_sess] == c_leaf),
                          side_quality=(self.brand_q[self.slot_brand[c_slot]]
                                        + self.shop_q[self.slot_shop[c_slot]]),
                          item_quality=self.item_q[c_slot])
        level = self._funnel(rng, odds, c_user, c_sess, prefs.shape[0], is_test)
        return dict(sessions=sessions, is_test=is_test, s_time=s_time, s_query=s_query,
                    c_sess=c_sess, c_slot=c_slot, level=level, odds=odds)

    def user_lines(self, rng: np.random.Generator, n: int) -> bytes:
        """Simulates ``n`` users and returns their behaviour-file lines."""
        sim = self.simulate(rng, n)
        del sim["odds"]
        return self._format(rng, n, **sim)

    def _funnel(self, rng, odds: FunnelOdds, c_user, c_sess, num_users: int,
                is_test) -> np.ndarray:
        """Funnel level per impression: 0 none, 1 click, 2 cart, 3 order, 4 follow (level 2)."""
        cfg = self.cfg
        logit = odds.click_logit(cfg)
        click = rng.random(logit.size) < _sigmoid(logit)
        # every user keeps at least one history event: force the best impression of the first
        # session of users whose history sessions produced no click
        history = ~is_test[c_sess]
        clicks_per_user = np.bincount(c_user[click & history], minlength=num_users)
        first_session = c_sess[np.r_[0, np.flatnonzero(np.diff(c_user)) + 1]]
        cand = np.flatnonzero(np.isin(c_sess, first_session) & (clicks_per_user[c_user] == 0))
        order = cand[np.lexsort((-logit[cand], c_sess[cand]))]
        click[order[np.r_[True, np.diff(c_sess[order]) != 0]]] = True
        cart = click & (rng.random(logit.size) < _sigmoid(odds.step_logit(cfg, "cart")))
        buy = cart & (rng.random(logit.size) < _sigmoid(odds.step_logit(cfg, "order")))
        level = click.astype(np.int8) + cart + buy
        follow = (level == 2) & (rng.random(logit.size) < cfg.follow_rate)
        return np.where(follow, 4, level).astype(np.int8)

    def _format(self, rng, n, sessions, is_test, s_time, s_query, c_sess, c_slot,
                level) -> bytes:
        """The seven columns of ``n`` users, one line each."""
        cfg = self.cfg
        c_user = np.repeat(np.arange(n), sessions)[c_sess]
        test = is_test[c_sess]
        cand_lens = np.bincount(c_user[test], minlength=n)
        label = LABEL_NAMES[_label(level[test])]
        ev = np.flatnonzero(~test & (level > 0))  # sorted by user, session, impression order
        ev_lens = np.bincount(c_user[ev], minlength=n)
        within = _segment_cumsum(1 + rng.exponential(cfg.event_gap, ev.size),
                                 np.bincount(c_sess[ev], minlength=is_test.size))
        # time points per user: its events, then the test search; forced non-decreasing
        points_lens = ev_lens + 1
        pos_test = np.cumsum(points_lens) - 1
        points = np.empty(points_lens.sum(), np.int64)
        is_point_test = np.zeros(points.size, bool)
        is_point_test[pos_test] = True
        points[~is_point_test] = s_time[c_sess[ev]] + within.astype(np.int64)
        points[pos_test] = s_time[is_test]
        offset = np.repeat(np.arange(n, dtype=np.int64) << 40, points_lens)
        points = np.maximum.accumulate(points + offset) - offset
        intervals = points - np.concatenate([[0], points[:-1]])
        intervals[np.cumsum(points_lens) - points_lens] = points[np.cumsum(points_lens)
                                                                 - points_lens]
        query_tok = np.where(s_query >= 0, self.query_text[np.maximum(s_query, 0)], b"-1")
        columns = [
            query_tok[is_test].tolist(),
            _ragged_join(self.slot_item[c_slot[test]].astype("S"), cand_lens, b"_"),
            _ragged_join(label, cand_lens, b"_"),
            _ragged_join(query_tok[c_sess[ev]], ev_lens, b"_"),
            _ragged_join(self.slot_item[c_slot[ev]].astype("S"), ev_lens, b"_"),
            _ragged_join(TYPE_NAMES[level[ev]], ev_lens, b"_"),
            _ragged_join(intervals.astype("S"), points_lens, b"_"),
        ]
        return b"".join(b"\t".join(row) + b"\n" for row in zip(*columns, strict=True))


def _label(level: np.ndarray) -> np.ndarray:
    """Request label per funnel level: a follow (4) is written as a cart (2)."""
    return np.minimum(level, 2) + (level == 3)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))
