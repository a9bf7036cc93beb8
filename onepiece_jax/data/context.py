"""Context engineering (SPEC §1): turn an event log into fixed-shape IH / PA / SD / CIS examples.

One example is one prediction: the user's history strictly before the example's time (IH), the
preference anchors known at that time (PA), the situational descriptors (SD: user, and query or
context), and — in ranking mode — the request's candidate set with per-task funnel labels (CIS).
Retrieval examples carry a candidate pool with per-task labels instead, plus the exact next item
(the leave-one-out target) and the history to exclude at evaluation.

Splits: sequential data is split leave-one-out by time (per user: last event = test,
second-to-last = validation, every earlier event a training target); logs with ranking requests
are split by request time (the latest ``test_fraction`` = test, the ``val_fraction`` before it =
validation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from onepiece_jax.data.anchors import AnchorConfig, AnchorIndex
from onepiece_jax.data.events import EventLog, Requests

SPLITS = ("train", "validation", "test")
_HIST_LEN_BUCKETS = np.array([1, 2, 4, 8, 16, 32, 64, 128])
_CONTEXT_VOCAB = {"weekday": 8, "hour": 9, "hist_len": len(_HIST_LEN_BUCKETS) + 2}


@dataclasses.dataclass(frozen=True)
class ContextConfig:
    """Shapes and rules of the context; built from ``config.context`` by :func:`from_config`."""

    mode: str = "retrieval"  # retrieval | ranking
    tasks: tuple[str, ...] = ("window", "next")
    ih_max_len: int = 50
    pa_groups: tuple[str, ...] = ()  # behaviour name per anchor group; () = no anchors
    pa_group_size: int = 10
    pa_key: str = "global"  # global | query
    pa_window_seconds: int = 7 * 86400
    pa_bucket_seconds: int = 86400
    pool_window: int = 5  # retrieval: the next W interactions form the example's pool
    max_candidates: int = 96  # ranking: candidates per request, padded (a multiple of C)
    val_fraction: float = 0.1  # ranking: time split
    test_fraction: float = 0.1
    # Training-data scaling (experiments' data_scaling suite): only the users of a fixed hash
    # subset of this size give training examples; validation and test stay whole. Not in
    # base_config (adding it would change the build key of every existing build): a config
    # file that wants it sets ``c.context.train_fraction`` (allowed by config.OPTIONAL_KEYS).
    train_fraction: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> ContextConfig:
        ctx = cfg.context
        names = {f.name for f in dataclasses.fields(cls)} - {"mode", "tasks"}
        kwargs = {k: (tuple(v) if isinstance(v, list | tuple) else v)
                  for k, v in ctx.items() if k in names}
        return cls(mode=cfg.mode, tasks=tuple(cfg.tasks), **kwargs)


def feature_spec(log: EventLog, cfg: ContextConfig) -> dict:
    """The feature spec the model builds its tables from (see docs/architecture.md)."""

    def tables(features):
        return {name: {"vocab_size": int(t.vocab_size), "width": t.width}
                for name, t in features.items()}

    context = {"hist_len": {"vocab_size": _CONTEXT_VOCAB["hist_len"], "width": 1}}
    if log.has_timestamps:
        context = {"weekday": {"vocab_size": _CONTEXT_VOCAB["weekday"], "width": 1},
                   "hour": {"vocab_size": _CONTEXT_VOCAB["hour"], "width": 1}, **context}
    return {
        "dataset": log.dataset,
        "item": tables(log.item_features),
        "user": tables(log.user_features),
        "query": tables(log.query_features),
        "context": context,
        "behaviors": list(log.behaviors),
        "pa_groups": list(cfg.pa_groups),
        "tasks": list(cfg.tasks),
        "mode": cfg.mode,
        "num_items": log.num_items,
        "num_users": log.num_users,
        "num_queries": log.num_queries,
        "has_timestamps": bool(log.has_timestamps),
    }


def catalog_arrays(log: EventLog) -> dict[str, np.ndarray]:
    """Flat ``{"item/genre": int32[N+1, w], ...}`` arrays for ``catalog.npz``."""
    out = {}
    for entity, features in (("item", log.item_features), ("user", log.user_features),
                             ("query", log.query_features)):
        for name, table in features.items():
            out[f"{entity}/{name}"] = table.values
    return out


def _level_of(log: EventLog, name: str, what: str) -> int:
    if name not in log.behaviors:
        raise ValueError(f"config {what}: unknown behaviour {name!r}; dataset {log.dataset} has "
                         f"{list(log.behaviors)}")
    return log.behaviors.index(name) + 1


def validate_tasks(log: EventLog, cfg: ContextConfig) -> None:
    """Fails early, naming the key, on tasks or anchor groups the dataset cannot provide."""
    for task in cfg.tasks:
        if cfg.mode == "retrieval" and task in ("window", "next"):
            continue
        _level_of(log, task, "tasks")
    for group in cfg.pa_groups:
        _level_of(log, group, "context.pa_groups")
    if cfg.mode == "ranking" and log.requests is None:
        raise ValueError(f"config mode='ranking': dataset {log.dataset} has no ranking requests")
    if cfg.pa_key == "query" and log.num_queries == 0:
        raise ValueError(f"config context.pa_key='query': dataset {log.dataset} has no queries")
    if cfg.pa_key not in ("global", "query"):
        raise ValueError(f"config context.pa_key={cfg.pa_key!r}: expected 'global' or 'query'")
    if not 0.0 < cfg.train_fraction <= 1.0:
        raise ValueError(f"config context.train_fraction={cfg.train_fraction}: must be in (0, 1]")


class ContextBuilder:
    """Builds examples split by split; holds the sorted log and the anchor index (built once)."""

    def __init__(self, log: EventLog, cfg: ContextConfig):
        validate_tasks(log, cfg)
        self.log, self.cfg = log, cfg
        order = np.lexsort((np.arange(log.num_events), log.time, log.user))
        self.user = log.user[order]
        self.item = log.item[order]
        self.time = log.time[order].astype(np.int64)
        self.behavior = log.behavior[order].astype(np.int32)
        self.query = log.query[order]
        self.user_start = np.searchsorted(self.user, np.arange(log.num_users + 2))
        self.skipped = self._skipped_users()
        self.train_mask = self._train_event_mask()
        self.anchors = self._anchor_index()
        self.spec = feature_spec(log, cfg)

    # ----------------------------------------------------------------- shared pieces
    def _user_slice(self, user: int) -> slice:
        return slice(self.user_start[user], self.user_start[user + 1])

    def _skipped_users(self) -> dict[str, int]:
        """Users that give no retrieval example (counted, never dropped silently): users of the
        vocabulary without events, and users with 1 or 2 events (leave-one-out needs 3: a
        training history, a validation and a test target). Ranking examples come from requests,
        so nothing is skipped there."""
        if self.cfg.mode == "ranking":
            return {}
        counts = np.diff(self.user_start)[1:self.log.num_users + 1]
        out = {"users_without_events": int((counts == 0).sum()),
               "users_with_fewer_than_3_events": int(((counts > 0) & (counts < 3)).sum())}
        return {k: v for k, v in out.items() if v}

    def _train_event_mask(self) -> np.ndarray:
        """Events usable as training signal: all but each user's last two (the LOO targets)."""
        if self.cfg.mode == "ranking":
            return np.ones(self.user.shape[0], bool)
        counts = np.diff(self.user_start)
        ends = self.user_start[1:]
        mask = np.ones(self.user.shape[0], bool)
        for back in (1, 2):
            last = ends[counts >= back] - back
            mask[last] = False
        return mask

    def _anchor_index(self) -> AnchorIndex | None:
        cfg = self.cfg
        if not cfg.pa_groups:
            return None
        acfg = AnchorConfig(
            group_levels=tuple(_level_of(self.log, g, "context.pa_groups") for g in cfg.pa_groups),
            group_size=cfg.pa_group_size, window=cfg.pa_window_seconds,
            bucket=cfg.pa_bucket_seconds)
        keys = self.query if cfg.pa_key == "query" else np.zeros_like(self.user)
        static = not self.log.has_timestamps
        sel = self.train_mask if static else slice(None)
        return AnchorIndex(keys[sel], self.time[sel], self.item[sel], self.behavior[sel], acfg,
                           static=static)

    def history(self, items: np.ndarray, behaviors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IH: de-duplicated keeping the latest occurrence, newest last, left-padded to L."""
        length = self.cfg.ih_max_len
        rev_items = items[::-1]
        _, first = np.unique(rev_items, return_index=True)
        keep = np.sort(first)[:length]  # latest occurrences, newest first
        ih_item = np.zeros(length, np.int32)
        ih_beh = np.zeros(length, np.int32)
        n = keep.size
        if n:
            ih_item[length - n:] = rev_items[keep][::-1]
            ih_beh[length - n:] = behaviors[::-1][keep][::-1]
        return ih_item, ih_beh

    def context_features(self, time: int, hist_len: int) -> np.ndarray:
        bucket = int(np.searchsorted(_HIST_LEN_BUCKETS, hist_len, side="right")) + 1
        if not self.log.has_timestamps:
            return np.array([bucket], np.int32)
        day = time // 86400
        weekday = (day + 3) % 7 + 1  # 1970-01-01 was a Thursday; 1 = Monday
        hour = (time % 86400) // 10800 + 1  # 3-hour buckets
        return np.array([weekday, hour, bucket], np.int32)

    def anchor_block(self, key: int, time: int) -> np.ndarray:
        if self.anchors is None:
            return np.zeros((0, self.cfg.pa_group_size), np.int32)
        return self.anchors.anchors(key, time)

    def _base(self, user: int, query: int, time: int, items, behaviors) -> dict:
        ih_item, ih_beh = self.history(items, behaviors)
        key = query if self.cfg.pa_key == "query" else 0
        return {
            "user": np.int32(user),
            "query": np.int32(query),
            "context": self.context_features(time, int(np.count_nonzero(ih_item))),
            "ih_item": ih_item,
            "ih_behavior": ih_beh,
            "pa_item": self.anchor_block(key, time),
            "time": np.int64(time),
        }

    # ----------------------------------------------------------------- retrieval
    def _task_labels(self, items_level: np.ndarray, is_next: np.ndarray) -> np.ndarray:
        cols = []
        for task in self.cfg.tasks:
            if task == "window":
                cols.append(np.ones_like(is_next, np.float32))
            elif task == "next":
                cols.append(is_next.astype(np.float32))
            else:
                cols.append((items_level >= _level_of(self.log, task, "tasks")).astype(np.float32))
        return np.stack(cols, axis=-1)

    def retrieval_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        """Leave-one-out examples of one split, user by user (streaming)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        w = self.cfg.pool_window
        for user in range(1, self.log.num_users + 1):
            sl = self._user_slice(user)
            n = sl.stop - sl.start
            if n < 3:
                continue
            if split == "train":
                targets = range(1, n - 2)
            else:
                targets = [n - 2] if split == "validation" else [n - 1]
            items, behs = self.item[sl], self.behavior[sl]
            times, queries = self.time[sl], self.query[sl]
            for t in targets:
                # training pools stop before the held-out events; eval pools are the target alone
                stop = min(t + w, n - 2) if split == "train" else t + 1
                pool = np.zeros(w, np.int32)
                pool[:stop - t] = items[t:stop]
                levels = np.zeros(w, np.int32)
                levels[:stop - t] = behs[t:stop]
                is_next = np.zeros(w, bool)
                is_next[0] = True
                labels = self._task_labels(levels, is_next) * (pool > 0)[:, None]
                ex = self._base(user, int(queries[t]), int(times[t]), items[:t], behs[:t])
                ex.update(pool_item=pool, pool_label=labels.astype(np.float32),
                          target=np.int32(items[t]),
                          exclude=(np.unique(items[:t]).astype(np.int32) if split != "train"
                                   else np.zeros(0, np.int32)))
                yield f"{user}-{t}", ex

    # ----------------------------------------------------------------- ranking
    def request_split(self, requests: Requests) -> np.ndarray:
        """Split name index per request (0 train, 1 validation, 2 test) by request time."""
        return time_split(requests.time, self.cfg.val_fraction, self.cfg.test_fraction)

    def ranking_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        """One example per request: its context, all its candidates (padded) and their labels."""
        requests = self.log.requests
        which = self.request_split(requests)
        want = SPLITS.index(split)
        nc = self.cfg.max_candidates
        for r in np.flatnonzero(which == want):
            user = int(requests.user[r])
            time = int(requests.time[r])
            sl = self._user_slice(user)
            before = sl.start + int(np.searchsorted(self.time[sl], time, side="left"))
            items, behs = self.item[sl.start:before], self.behavior[sl.start:before]
            cand = requests.cand_item[requests.offsets[r]:requests.offsets[r + 1]]
            lab = requests.cand_label[requests.offsets[r]:requests.offsets[r + 1]].astype(np.int32)
            if cand.size > nc:
                raise ValueError(f"request {r} has {cand.size} candidates > "
                                 f"context.max_candidates={nc}; raise it")
            cis = np.zeros(nc, np.int32)
            cis[:cand.size] = cand
            levels = np.zeros(nc, np.int32)
            levels[:cand.size] = lab
            labels = self._task_labels(levels, np.zeros(nc, bool)) * (cis > 0)[:, None]
            ex = self._base(user, int(requests.query[r]), time, items, behs)
            ex.update(cis_item=cis, cis_label=labels.astype(np.float32), request=np.int32(r + 1))
            yield f"r{r}", ex

    def examples(self, split: str) -> Iterator[tuple[str, dict]]:
        found = (self.ranking_examples(split) if self.cfg.mode == "ranking"
                 else self.retrieval_examples(split))
        fraction = self.cfg.train_fraction
        if split != "train" or fraction >= 1.0:
            return found
        return ((key, ex) for key, ex in found if in_user_fraction(int(ex["user"]), fraction))


def in_user_fraction(user: int, fraction: float) -> bool:
    """Whether ``user`` is in the hash subset of size ``fraction``; subsets are nested (the
    10% users are among the 20%), so a scaling curve only ever adds training users."""
    return (user * 2654435761) % 2**32 < fraction * 2**32


def sessions_to_requests(log: EventLog, *, session_seconds: int, negatives: int,
                         seed: int) -> Requests:
    """Ranking requests from a log without impressions (Taobao): one request per user-session.

    A session's distinct items are its candidates, labelled with the strongest behaviour the user
    showed on them; ``negatives`` uniformly drawn items the user did not touch in the session are
    added with label 0 (the "exposed, not engaged" stand-in). The request time is the session's
    first event, so its history holds only earlier sessions. The user's first session has no
    history and is skipped.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((log.time, log.user))
    user, item, time = log.user[order], log.item[order], log.time[order]
    beh = log.behavior[order]
    session = time // session_seconds
    starts = np.flatnonzero(np.r_[True, (user[1:] != user[:-1]) | (session[1:] != session[:-1])])
    ends = np.r_[starts[1:], user.size]
    first_of_user = np.r_[True, user[starts[1:]] != user[starts[:-1]]]
    req_user, req_time, offsets, cand_items, cand_labels = [], [], [0], [], []
    for s, e, first in zip(starts, ends, first_of_user, strict=True):
        if first:
            continue
        uniq, inv = np.unique(item[s:e], return_inverse=True)
        best = np.zeros(uniq.size, np.int8)
        np.maximum.at(best, inv, beh[s:e].astype(np.int8))
        neg = np.setdiff1d(rng.integers(1, log.num_items + 1, size=negatives), uniq)
        neg = neg.astype(np.int32)
        cands = np.concatenate([uniq.astype(np.int32), neg])
        labels = np.concatenate([best, np.zeros(neg.size, np.int8)])
        req_user.append(user[s])
        req_time.append(time[s])
        cand_items.append(cands)
        cand_labels.append(labels)
        offsets.append(offsets[-1] + cands.size)
    return Requests(user=np.asarray(req_user, np.int32), time=np.asarray(req_time, np.int64),
                    query=np.zeros(len(req_user), np.int32),
                    offsets=np.asarray(offsets, np.int64),
                    cand_item=(np.concatenate(cand_items) if cand_items
                               else np.zeros(0, np.int32)),
                    cand_label=(np.concatenate(cand_labels) if cand_labels
                                else np.zeros(0, np.int8)))


def time_split(times: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split name index (0 train, 1 validation, 2 test) per request: the latest
    ``test_fraction`` by time are test, the ``val_fraction`` before them validation."""
    r = len(times)
    order = np.argsort(times, kind="stable")
    n_test = int(round(r * test_fraction))
    n_val = int(round(r * val_fraction))
    split = np.zeros(r, np.int8)
    split[order[r - n_test:]] = 2
    split[order[r - n_test - n_val:r - n_test]] = 1
    return split
