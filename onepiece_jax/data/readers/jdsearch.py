"""JDsearch reader (SIGIR 2023 personalised product search); also reads the synthetic data.

``path`` is a folder with ``user_behavior_data.txt`` and ``product_meta_data.txt`` (or their
``_sample`` variants). Behaviour file: a header, then one **user per line** (no user id column:
a user's raw id is its line number in the file) with seven tab-separated columns; lists are
``_``-separated, query terms inside one query are separated by the byte 0x18, ``-1`` = no query.

- Funnel (weak → strong): ``click`` → ``cart`` → ``order``. History types CLICK=click, CART=cart,
  ORD=order, and FLW (follow the shop/product) is mapped to ``cart``: like add-to-cart it is an
  explicit intent signal short of a purchase. ``raw_behavior_counts`` keeps CLICK/CART/FLW/ORD.
- Time: ``history_time_list`` has one interval more than the history (the last is the test
  search); an event's time is the cumulative sum of the intervals up to and including its own,
  starting with the first entry. The real data starts every user at 0 (per-user relative time);
  the synthetic generator writes an absolute start offset there so all users share one clock.
- Queries: one dense query id per distinct query string; ``query_features["query_terms"]`` holds
  the term ids (multi-valued, width capped at ``max_query_terms``, default 8; longer queries keep
  their first terms and are counted in ``skipped["query_terms_truncated"]``). ``query_ids`` holds
  each query's raw term ids joined by spaces.
- The test search of each line is one ranking request: the user, time = the line's last
  cumulative time, its query, the candidates and their labels (0 none, 1 click, 2 cart,
  3 purchase — the same numbering as the behaviour levels).
- Items: every id of the product catalogue plus every id in histories and candidates. Item
  features ``brand``, ``cate_1``..``cate_4``, ``shop`` (``-1`` = missing → 0); items absent from the
  catalogue get 0 features (``skipped["items_without_meta"]``); a repeated catalogue id keeps its
  first row (``skipped["duplicate_item_rows"]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from onepiece_jax.data.events import DataError, EventLog, FeatureTable, Requests, identity_table
from onepiece_jax.data.readers import _common as c

HEADER = ("query", "candidate_wid_list", "candidate_label_list", "history_qry_list",
          "history_wid_list", "history_type_list", "history_time_list")
META_COLUMNS = {"brand": "brand_id", "cate_1": "cate_id_1", "cate_2": "cate_id_2",
                "cate_3": "cate_id_3", "cate_4": "cate_id_4", "shop": "shop_id"}
BEHAVIOR_FILES = ("user_behavior_data.txt", "user_behavior_data_sample.txt")
META_FILES = ("product_meta_data.txt", "product_meta_data_sample.txt")
BEHAVIORS = ("click", "cart", "order")
SOURCE_TYPES = (b"CLICK", b"CART", b"FLW", b"ORD")  # raw names, in raw-code order
LEVEL_OF_SOURCE = np.array([1, 2, 2, 3], np.int8)
LIST_SEP, TERM_SEP, NO_QUERY = b"_", b"\x18", b"-1"
MAX_QUERY_TERMS = 8
MAX_LABEL = 3
# ``generate_synthetic`` writes its arguments here; its presence marks a synthetic world, which
# protocol strings must not pass off as the real JDsearch logs
WORLD_FILE = "synth.json"
SYNTHETIC_LABEL = "synthetic (JDsearch format)"


def is_world(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished synthetic world: the one test the reader's label, the
    experiment runner's cache and ``world_arguments`` share."""
    return (Path(folder) / WORLD_FILE).is_file()


def read_jdsearch(path: str | Path, *, max_query_terms: int = MAX_QUERY_TERMS) -> EventLog:
    """Reads a JDsearch folder (real, sample or synthetic) into an EventLog with requests."""
    folder = Path(path)
    behavior_path = _pick(folder, BEHAVIOR_FILES, "user behaviour file")
    meta_path = _pick(folder, META_FILES, "product meta file")
    skipped: dict[str, int] = {}
    names = c.read_header(behavior_path, b"\t")
    if tuple(names) != HEADER:
        raise DataError(f"header must be {' '.join(HEADER)}, got {' '.join(names)}",
                        path=str(behavior_path), line=1, field="header")
    acc = _Accumulator(behavior_path)
    for nums, lines in c.iter_line_chunks(behavior_path, skipped, header=True):
        acc.add_chunk(nums, lines)
    ev, rq = acc.events(), acc.requests()
    meta_ids, meta_values = _read_meta(meta_path, skipped)
    items = c.sorted_vocab(meta_ids, ev["item"], rq["cand_item"])
    c.bump(skipped, "items_without_meta", np.setdiff1d(items, meta_ids).size)
    rows = c.dense(items, meta_ids)
    item_features = {"item_id": identity_table(items.size)}
    for k, name in enumerate(META_COLUMNS):
        item_features[name] = c.entity_table(items.size, rows, meta_values[:, k], missing=-1)
    query_features, query_ids, truncated = acc.query_tables(max_query_terms)
    c.bump(skipped, "query_terms_truncated", truncated)
    users = acc.user_lines()
    requests = Requests(user=c.dense(users, rq["user"]), time=rq["time"],
                        query=rq["query"].astype(np.int32), offsets=rq["offsets"],
                        cand_item=c.dense(items, rq["cand_item"]), cand_label=rq["cand_label"])
    return c.build_log(
        dataset=SYNTHETIC_LABEL if is_world(folder) else "jdsearch",
        user=c.dense(users, ev["user"]), item=c.dense(items, ev["item"]),
        time=ev["time"], behavior=LEVEL_OF_SOURCE[ev["source"]], query=ev["query"],
        behaviors=BEHAVIORS, has_timestamps=True, item_features=item_features,
        user_features={"user_id": identity_table(users.size)}, query_features=query_features,
        item_ids=c.with_padding_row(items), user_ids=c.with_padding_row(users),
        query_ids=query_ids, requests=requests, skipped=skipped,
        raw_behavior_counts=c.count_by_name(ev["source"], [t.decode() for t in SOURCE_TYPES]))


def _pick(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"missing {what} (expected {' or '.join(names)})", path=str(folder))


@dataclasses.dataclass
class _Ragged:
    """One ``_``-separated list column of a chunk: per-line lengths and the flat tokens."""

    lens: np.ndarray
    flat: np.ndarray  # S tokens
    nums: np.ndarray  # the line number of every token (for error messages)


class _Accumulator:
    """Turns behaviour-file chunks into numpy column chunks and keeps the query dictionary."""

    def __init__(self, path: Path):
        self.path = path
        self.queries: dict[bytes, int] = {}
        self.parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("user", "item", "time", "source", "query", "r_user", "r_time",
                            "r_query", "r_len", "cand_item", "cand_label")}

    def add_chunk(self, nums: np.ndarray, lines: list[bytes]) -> None:
        widths = np.fromiter((ln.count(b"\t") + 1 for ln in lines), np.int64, len(lines))
        bad = np.flatnonzero(widths != len(HEADER))
        if bad.size:
            raise DataError(f"expected {len(HEADER)} tab-separated columns, got "
                            f"{widths[bad[0]]}", path=str(self.path), line=int(nums[bad[0]]))
        flat = b"\t".join(lines).split(b"\t")
        col = {name: flat[k::len(HEADER)] for k, name in enumerate(HEADER)}
        del flat
        cand, label = self._list(col, "candidate_wid_list", nums), self._list(
            col, "candidate_label_list", nums)
        h_qry, h_wid = self._list(col, "history_qry_list", nums), self._list(
            col, "history_wid_list", nums)
        h_type, h_time = self._list(col, "history_type_list", nums), self._list(
            col, "history_time_list", nums)
        self._same_lengths(nums, ("candidate_label_list", label.lens, cand.lens),
                           ("history_qry_list", h_qry.lens, h_wid.lens),
                           ("history_type_list", h_type.lens, h_wid.lens),
                           ("history_time_list", h_time.lens, h_wid.lens + 1))
        intervals = c.to_int(h_time.flat, h_time.nums, self.path, "history_time_list")
        negative = np.flatnonzero(intervals < 0)
        if negative.size:
            raise DataError(f"negative time interval {intervals[negative[0]]}", path=str(self.path),
                            line=int(h_time.nums[negative[0]]), field="history_time_list")
        # cumulative time within each line: a global cumsum minus the total before the line
        total = np.cumsum(intervals)
        ends = np.cumsum(h_time.lens)
        before = np.concatenate([[0], total[ends[:-1] - 1]])
        times = total - np.repeat(before, h_time.lens)
        is_test = np.zeros(times.size, bool)
        is_test[ends - 1] = True
        p = self.parts
        p["user"].append(np.repeat(nums, h_wid.lens))
        p["item"].append(c.narrow(c.to_int(h_wid.flat, h_wid.nums, self.path, "history_wid_list")))
        p["time"].append(times[~is_test])
        p["source"].append(c.lookup(h_type.flat, {t: i for i, t in enumerate(SOURCE_TYPES)},
                                    h_type.nums, self.path, "history_type_list").astype(np.int8))
        p["query"].append(self._query_codes(h_qry.flat, h_qry.nums, "history_qry_list"))
        p["r_user"].append(nums)
        p["r_time"].append(times[is_test])
        p["r_query"].append(self._query_codes(np.array(col["query"]), nums, "query"))
        p["r_len"].append(cand.lens)
        p["cand_item"].append(c.narrow(c.to_int(cand.flat, cand.nums, self.path,
                                                "candidate_wid_list")))
        p["cand_label"].append(self._labels(label))

    def _list(self, col: dict[str, list[bytes]], name: str, nums: np.ndarray) -> _Ragged:
        values = col[name]
        lens = np.fromiter((v.count(LIST_SEP) + 1 if v else 0 for v in values), np.int64,
                           len(values))
        joined = LIST_SEP.join(v for v in values if v)
        flat = np.array(joined.split(LIST_SEP)) if joined else np.zeros(0, "S1")
        return _Ragged(lens, flat, np.repeat(nums, lens))

    def _same_lengths(self, nums: np.ndarray, *checks: tuple[str, np.ndarray, np.ndarray]):
        for field, got, want in checks:
            bad = np.flatnonzero(got != want)
            if bad.size:
                i = int(bad[0])
                raise DataError(f"list has {got[i]} entries, expected {want[i]}",
                                path=str(self.path), line=int(nums[i]), field=field)

    def _labels(self, label: _Ragged) -> np.ndarray:
        values = c.to_float(label.flat, label.nums, self.path, "candidate_label_list")
        bad = np.flatnonzero((values != np.round(values)) | (values < 0) | (values > MAX_LABEL))
        if bad.size:
            raise DataError(f"label must be 0..{MAX_LABEL}, got {label.flat[bad[0]]!r}",
                            path=str(self.path), line=int(label.nums[bad[0]]),
                            field="candidate_label_list")
        return values.astype(np.int8)

    def _query_codes(self, tokens: np.ndarray, nums: np.ndarray, field: str) -> np.ndarray:
        """Dense query ids (``-1`` = 0), numbered as they first appear chunk by chunk (sorted
        inside a chunk), so a file always gets the same ids; each new query's terms are checked."""
        if tokens.size == 0:
            return np.zeros(0, np.int32)
        uniq, first, inv = np.unique(tokens, return_index=True, return_inverse=True)
        codes = np.zeros(uniq.size, np.int32)
        for j, q in enumerate(uniq.tolist()):
            if q == NO_QUERY:
                continue
            if q not in self.queries:
                if not all(t.isdigit() for t in q.split(TERM_SEP)):
                    raise DataError(f"query terms must be integer ids separated by 0x18, got "
                                    f"{q!r}", path=str(self.path), line=int(nums[first[j]]),
                                    field=field)
                self.queries[q] = len(self.queries) + 1
            codes[j] = self.queries[q]
        return codes[inv.reshape(-1)]

    def events(self) -> dict[str, np.ndarray]:
        p = self.parts
        return {"user": c.concat(p["user"], np.int64), "item": c.concat(p["item"], np.int64),
                "time": c.concat(p["time"], np.int64), "source": c.concat(p["source"], np.int8),
                "query": c.concat(p["query"], np.int32)}

    def requests(self) -> dict[str, np.ndarray]:
        p = self.parts
        lens = c.concat(p["r_len"], np.int64)
        return {"user": c.concat(p["r_user"], np.int64), "time": c.concat(p["r_time"], np.int64),
                "query": c.concat(p["r_query"], np.int32),
                "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                "cand_item": c.concat(p["cand_item"], np.int64),
                "cand_label": c.concat(p["cand_label"], np.int8)}

    def user_lines(self) -> np.ndarray:
        return c.concat(self.parts["r_user"], np.int64)

    def query_tables(self, cap: int) -> tuple[dict[str, FeatureTable], np.ndarray, int]:
        """``query_id`` + ``query_terms`` tables, the raw query strings, and truncations."""
        terms = [q.split(TERM_SEP) for q in self.queries]  # dict order = dense id order
        lens = np.array([len(t) for t in terms], np.int64)
        flat = np.array([int(x) for t in terms for x in t], np.int64)
        n = len(terms)
        table, truncated = c.ragged_table(n, np.arange(1, n + 1), lens, flat, cap)
        raw = np.array([""] + [" ".join(x.decode() for x in t) for t in terms])
        return {"query_id": identity_table(n), "query_terms": table}, raw, truncated


def _read_meta(path: Path, skipped: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue ids and [n, 6] raw brand/cate_1..4/shop ids (-1 = missing), first row per id."""
    names = c.read_header(path, b"\t")
    cols = [c.column_index(names, "wid", path)]
    cols += [c.column_index(names, col, path) for col in META_COLUMNS.values()]
    ids, values = [], []
    for nums, t in c.iter_columns(path, b"\t", len(names), skipped, header=True, cols=cols):
        ids.append(c.narrow(c.to_int(t[:, 0], nums, path, "wid")))
        values.append(np.stack([c.narrow(c.to_int(t[:, k + 1], nums, path, col))
                                for k, col in enumerate(META_COLUMNS.values())], axis=1))
    ids_all, values_all = np.concatenate(ids), np.concatenate(values)
    keep = c.first_rows(ids_all, skipped, "duplicate_item_rows")
    return ids_all[keep], values_all[keep]
