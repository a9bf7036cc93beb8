"""Readers: the shared public data, both MovieLens layouts, and malformed inputs per reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onepiece_jax.data.events import DataError
from onepiece_jax.data.readers import READERS, read_dataset

# --- writers of small valid inputs -------------------------------------------------------------

RECBOLE_INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                 "1\t10\t5\t100", "1\t20\t4\t90", "2\t10\t3\t200", "2\t30\t1\t150"]
RECBOLE_ITEM = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                "10\tToy Story\t1995\tAnimation Children's Comedy", "20\tHeat\t1995\tAction",
                "30\tOld One\tunkonwn\tDrama"]
RECBOLE_USER = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
                "1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\t94043"]


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("".join(f"{ln}\n" for ln in lines), encoding=encoding)
    return path


def _recbole(folder: Path, inter=RECBOLE_INTER, item=RECBOLE_ITEM, user=RECBOLE_USER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("inter", inter), ("item", item), ("user", user)):
        _write(folder / f"ml-100k.{name}", lines)
    return folder


def _flags(*genres: int) -> str:
    return "|".join("1" if g in genres else "0" for g in range(19))


def _grouplens(folder: Path, data: list[str] | None = None) -> Path:
    """The same rows as the RecBole writer, in the GroupLens layout."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "u.data", data or ["1\t10\t5\t100", "1\t20\t4\t90", "2\t10\t3\t200",
                                       "2\t30\t1\t150"])
    _write(folder / "u.item", [f"10|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}",
                               f"20|Heat (1995)|15-Dec-1995||http://y|{_flags(1)}",
                               f"30|Old One||||{_flags(8)}"], encoding="latin-1")
    _write(folder / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])
    return folder


JD_HEADER = ("query\tcandidate_wid_list\tcandidate_label_list\thistory_qry_list\t"
             "history_wid_list\thistory_type_list\thistory_time_list")
JD_LINES = ["5\x186\t100_101_102\t1.0_0.0_3.0\t-1_7\x188\t100_103\tCLICK_FLW\t1000_5_20",
            "9\t101_104\t0.0_2.0\t5\x186_5\x186_-1\t102_102_101\tCART_ORD_CLICK\t1200_1_1_7"]
META_HEADER = ("wid\tname\tbrand_id\tbrand_name\tcate_id_1\tcate_name_1\tcate_id_2\tcate_name_2"
               "\tcate_id_3\tcate_name_3\tcate_id_4\tcate_name_4\tshop_id")
META_LINES = ["100\tn\t1\tb\t11\tc\t21\tc\t31\tc\t41\tc\t51",
              "101\tn\t2\tb\t11\tc\t22\tc\t32\tc\t42\tc\t-1",
              "102\tn\t-1\t\t12\tc\t23\tc\t33\tc\t43\tc\t52"]


def _jd(folder: Path, lines=JD_LINES, meta=META_LINES, header=JD_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "user_behavior_data.txt", [header, *lines])
    _write(folder / "product_meta_data.txt", [META_HEADER, *meta])
    return folder


def _expect_error(fn, path: Path, line: int | None, field: str | None = None) -> DataError:
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert path.name in msg, msg
    if line is not None:
        assert f"line {line}" in msg, msg
    if field is not None:
        assert repr(field) in msg, msg
    return info.value


# --- registry ----------------------------------------------------------------------------------

def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="ml100k") as info:
        read_dataset("netflix", tmp_path)
    assert all(name in str(info.value) for name in READERS)


# --- MovieLens ---------------------------------------------------------------------------------

def test_ml100k_recbole_funnel_and_features(tmp_path):
    log = read_dataset("ml100k", _recbole(tmp_path / "ml"))
    assert log.behaviors == ("watched", "rated>=4", "rated5")
    # events sorted by (user, time): user 1 rated 20 (4★, t=90) then 10 (5★, t=100)
    assert log.item_ids[log.item].tolist() == [20, 10, 30, 10]
    assert log.behavior.tolist() == [2, 3, 1, 1]
    assert log.time.tolist() == [90, 100, 150, 200]
    genre = log.item_features["genre"]
    assert genre.width == 3 and genre.vocab_size == 6
    toy = int(np.flatnonzero(log.item_ids == 10)[0])
    assert (genre.values[toy] > 0).sum() == 3
    old = int(np.flatnonzero(log.item_ids == 30)[0])
    assert log.item_features["year"].values[old, 0] == 0
    assert log.skipped == {"items_without_year": 1}
    assert log.user_features["age"].values[1:, 0].tolist() == [1, 2]  # buckets 18-24, 50-55
    assert log.raw_behavior_counts == {"rating=1": 1, "rating=3": 1, "rating=4": 1, "rating=5": 1}


def test_ml100k_grouplens_matches_recbole(tmp_path):
    a = read_dataset("ml100k", _recbole(tmp_path / "recbole"))
    b = read_dataset("ml100k", _grouplens(tmp_path / "grouplens"))
    for col in ("user", "item", "time", "behavior"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    for name in ("genre", "year"):
        np.testing.assert_array_equal(a.item_features[name].values, b.item_features[name].values)
    for name in ("age", "gender", "occupation"):
        np.testing.assert_array_equal(a.user_features[name].values, b.user_features[name].values)


def test_ml100k_shared(shared_data):
    log = read_dataset("ml100k", shared_data / "ml-100k")
    assert (log.num_events, log.num_users, log.num_items) == (100_000, 943, 1682)
    assert log.item_features["genre"].width == 6
    assert np.all(np.diff(log.user) >= 0)
    same_user = log.user[1:] == log.user[:-1]
    assert np.all(np.diff(log.time)[same_user] >= 0)


@pytest.mark.parametrize("case", ["columns", "user_id", "rating", "timestamp", "empty"])
def test_ml100k_malformed_ratings(tmp_path, case):
    inter = list(RECBOLE_INTER)
    line, field = 3, None
    if case == "columns":
        inter[2] = "1\t20\t4"
    elif case == "user_id":
        inter[2], field = "u1\t20\t4\t90", "user_id"
    elif case == "rating":
        inter[2], field = "1\t20\tnan\t90", "rating"
    elif case == "timestamp":
        inter[2], field = "1\t20\t4\tyesterday", "timestamp"
    else:
        inter, line = inter[:1], 2
    folder = _recbole(tmp_path, inter=inter)
    _expect_error(lambda: read_dataset("ml100k", folder), folder / "ml-100k.inter", line, field)


def test_ml100k_missing_companion_and_bad_flags(tmp_path):
    folder = _recbole(tmp_path / "a")
    (folder / "ml-100k.user").unlink()
    _expect_error(lambda: read_dataset("ml100k", folder), folder / "ml-100k.user", None)
    gl = _grouplens(tmp_path / "b")
    text = (gl / "u.item").read_text(encoding="latin-1").replace("|01-Jan-1995||http://x|0",
                                                                 "|01-Jan-1995||http://x|2")
    (gl / "u.item").write_text(text, encoding="latin-1")
    _expect_error(lambda: read_dataset("ml100k", gl), gl / "u.item", 1, "genre:unknown")
    with pytest.raises(DataError, match="no MovieLens-100K files"):
        read_dataset("ml100k", tmp_path / "nothing")


# --- RecBole atomic files (any dataset) --------------------------------------------------------

def test_atomic_reads_movielens_recbole_files_as_the_ml100k_reader_does(shared_data):
    atomic = read_dataset("atomic", shared_data / "ml-100k")
    ml = read_dataset("ml100k", shared_data / "ml-100k")
    for column in ("user", "item", "time"):
        np.testing.assert_array_equal(getattr(atomic, column), getattr(ml, column))
    np.testing.assert_array_equal(atomic.item_ids, ml.item_ids)
    assert atomic.dataset == "ml-100k" and atomic.behaviors == ("interact",)
    assert atomic.skipped == {"inter_columns_not_used": 1,  # rating
                              "item_movie_title_truncated": 21}
    assert {"release_year", "movie_title", "class"} <= set(atomic.item_features)
    assert set(atomic.user_features) == {"user_id", "age", "gender", "occupation", "zip_code"}
    np.testing.assert_array_equal(atomic.item_features["class"].values > 0,
                                  ml.item_features["genre"].values > 0)


def test_atomic_levels_from_a_rating_are_the_ml100k_readers_funnel(shared_data):
    atomic = read_dataset("atomic", shared_data / "ml-100k", level_field="rating",
                          level_thresholds=(4, 5))
    ml = read_dataset("ml100k", shared_data / "ml-100k")
    assert atomic.behaviors == ("interact", "rating>=4", "rating>=5")
    np.testing.assert_array_equal(atomic.behavior, ml.behavior)
    assert sum(atomic.raw_behavior_counts.values()) == 100_000
    assert "inter_columns_not_used" not in atomic.skipped  # the rating is read now
    from onepiece_jax.config import load_config
    from onepiece_jax.data.tfds_builder import read_log

    config = load_config(Path(__file__).parents[2] / "configs" / "atomic_onepiece.py", [
        f"--config.dataset.path={shared_data / 'ml-100k'}", "--config.dataset.level_field=rating",
        "--config.dataset.level_thresholds=4,5"])
    np.testing.assert_array_equal(read_log(config).behavior, ml.behavior)  # config → reader


def test_atomic_levels_from_a_behaviour_column_are_the_taobao_readers_funnel(shared_data,
                                                                           tmp_path):
    csv = shared_data / "taobao-userbehavior-slice" / "UserBehavior.csv"
    rows = [line.split(",") for line in csv.read_text().splitlines() if line.strip()]
    _write(tmp_path / "taobao.inter", [
        "user_id:token\titem_id:token\tcategory_id:token\tbehavior:token\ttimestamp:float",
        *("\t".join(row) for row in rows)])
    atomic = read_dataset("atomic", tmp_path, level_field="behavior",
                          level_tokens=("pv", "cart/fav", "buy"))
    taobao = read_dataset("taobao", csv)
    for column in ("user", "item", "time", "behavior"):
        np.testing.assert_array_equal(getattr(atomic, column), getattr(taobao, column))
    assert atomic.behaviors == taobao.behaviors == ("pv", "cart/fav", "buy")
    assert atomic.raw_behavior_counts == taobao.raw_behavior_counts  # pv, cart, fav, buy apart
    _write(tmp_path / "taobao.inter", ["user_id:token\titem_id:token\tbehavior:token",
                                       "1\t2\tpv", "1\t3\tclick"])
    _expect_error(lambda: read_dataset("atomic", tmp_path, level_field="behavior",
                                       level_tokens=("pv", "buy")),
                  tmp_path / "taobao.inter", 3, "behavior")


@pytest.mark.parametrize("kwargs, give", [
    (dict(level_field="rating"), "thresholds or tokens with it"),
    (dict(level_thresholds=(4,)), "a field with them"),
    (dict(level_field="rating", level_thresholds=(5, 4)), "finite, increasing thresholds"),
    (dict(level_field="rating", level_thresholds=(4, float("nan"))), "finite, increasing"),
    (dict(level_field="timestamp", level_thresholds=(4,)), "a column other than the ids"),
    (dict(level_field="b", level_thresholds=(4,), level_tokens=("x",)),
     "thresholds or tokens, not"),
    (dict(level_field="b", level_tokens=("pv", "cart/pv")), "each token once"),
])
def test_atomic_funnel_options_that_cannot_work_say_what_to_give(tmp_path, kwargs, give):
    _write(tmp_path / "x.inter", ["user_id:token\titem_id:token", "1\t2"])
    with pytest.raises(ValueError, match=f"level_field=.*: give {give}"):
        read_dataset("atomic", tmp_path, **kwargs)


def test_atomic_text_ids_without_timestamps_keep_file_order_and_catalogue_features(tmp_path):
    _write(tmp_path / "shop.inter", ["session_len:float\tuser_id:token\titem_id:token",
                                     "1\tbob\tsku-9", "2\tamy\tsku-10", "3\tbob\t042",
                                     "4\tbob\tsku-9"])
    _write(tmp_path / "shop.item", ["item_id:token\tbrand:token\ttags:token_seq\tprice:float",
                                    "sku-9\tacme\ta b c\t9.5", "042\t\t\t1.0",
                                    "sku-9\tother\tz\t2.0", "sku-77\tacme\tb\t3.0"])
    log = read_dataset("atomic", tmp_path, max_seq=2)
    assert not log.has_timestamps and log.dataset == "shop"
    assert log.user_ids[1:].tolist() == ["amy", "bob"]
    assert log.item_ids[1:].tolist() == ["042", "sku-10", "sku-77", "sku-9"]  # "042" stays text
    events = [(log.user_ids[u], log.item_ids[i], t)
              for u, i, t in zip(log.user, log.item, log.time, strict=True)]
    assert events == [("amy", "sku-10", 0), ("bob", "sku-9", 0), ("bob", "042", 1),
                      ("bob", "sku-9", 2)]
    brand = log.item_features["brand"].values[:, 0].tolist()
    assert brand[:3] == [0, 0, 0] and brand[3] == brand[4] > 0  # 042 empty, sku-10 no row
    assert log.item_features["brand"].vocab_size == 2  # acme; sku-9's repeated row is not read
    assert log.item_features["tags"].width == 2
    assert log.skipped == {"duplicate_item_rows": 1, "inter_columns_not_used": 1,
                           "item_columns_not_used": 1, "item_tags_truncated": 1,
                           "items_without_meta": 1}


@pytest.mark.parametrize("case", ["untyped", "no_item_id", "columns", "timestamp", "empty_id",
                                  "non_utf8", "item_header", "no_level_field", "level"])
def test_atomic_malformed_files_name_file_line_and_field(tmp_path, case):
    inter = ["user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\t10", "u1\ti2\t20"]
    item = ["item_id:token\tbrand:token", "i1\tacme"]
    path, line, field = tmp_path / "x.inter", 3, None
    if case == "untyped":
        inter[0], line, field = "user_id:token\titem_id\ttimestamp:float", 1, "item_id"
    elif case == "no_item_id":
        inter[0], line, field = "user_id:token\tsku:token\ttimestamp:float", 1, "item_id"
    elif case == "columns":
        inter[2] = "u1\ti2"
    elif case == "timestamp":
        inter[2], field = "u1\ti2\tsoon", "timestamp"
    elif case == "empty_id":
        inter[2], field = "u1\t \t20", "item_id"
    elif case == "item_header":
        item[0], path, line, field = "sku:token\tbrand:token", tmp_path / "x.item", 1, "item_id"
    elif case == "no_level_field":
        line, field = 1, "stars"
    elif case == "level":
        inter = [f"{ln}\tstars:float" if k == 0 else f"{ln}\t{'4' if k == 1 else 'n/a'}"
                 for k, ln in enumerate(inter)]
        field = "stars"
    _write(tmp_path / "x.inter", inter)
    _write(tmp_path / "x.item", item)
    if case == "non_utf8":
        (tmp_path / "x.inter").write_bytes((tmp_path / "x.inter").read_bytes().replace(
            b"u1\ti2", b"u\xff\ti2"))
        field = "user_id"
    levels = (dict(level_field="stars", level_thresholds=(4,))
              if case in ("no_level_field", "level") else {})
    _expect_error(lambda: read_dataset("atomic", tmp_path, **levels), path, line, field)


def test_atomic_columns_named_otherwise_are_read_by_the_names_given(tmp_path):
    """RecBole's USER_ID_FIELD / ITEM_ID_FIELD / TIME_FIELD: Yelp's items are ``business_id``;
    the catalogue is keyed by the same column, and a time column named by hand must exist."""
    _write(tmp_path / "yelp.inter", ["uid:token\tbusiness_id:token\tdate:float\tstars:float",
                                     "u1\tb2\t20\t5", "u1\tb1\t10\t3", "u2\tb2\t15\t4"])
    _write(tmp_path / "yelp.item", ["business_id:token\tcity:token", "b1\tParis",
                                    "b2\tLyon"])
    _write(tmp_path / "yelp.user", ["uid:token\telite:token", "u2\tyes"])
    fields = dict(user_field="uid", item_field="business_id", time_field="date")
    log = read_dataset("atomic", tmp_path, **fields, level_field="stars",
                       level_thresholds=(4,))
    assert log.has_timestamps and log.skipped == {"users_without_meta": 1}
    events = [(log.user_ids[u], log.item_ids[i], t, b)
              for u, i, t, b in zip(log.user, log.item, log.time, log.behavior, strict=True)]
    assert sorted(events) == [("u1", "b1", 10, 1), ("u1", "b2", 20, 2), ("u2", "b2", 15, 2)]
    city = log.item_features["city"]
    assert city.values[1, 0] != city.values[2, 0] and set(log.item_features) == {"item_id",
                                                                                   "city"}
    assert log.user_features["elite"].values[:, 0].tolist() == [0, 0, 1]  # u1 has no row
    without_time = read_dataset("atomic", tmp_path, user_field="uid",
                                item_field="business_id")
    assert not without_time.has_timestamps  # no "timestamp" column: file order
    _expect_error(lambda: read_dataset("atomic", tmp_path, **{**fields, "time_field": "ts"}),
                  tmp_path / "yelp.inter", 1, "ts")
    _expect_error(lambda: read_dataset("atomic", tmp_path, user_field="uid"),
                  tmp_path / "yelp.inter", 1, "item_id")
    with pytest.raises(ValueError, match="give three different column names"):
        read_dataset("atomic", tmp_path, user_field="uid", item_field="uid")
    with pytest.raises(ValueError, match="give a column other than the ids"):
        read_dataset("atomic", tmp_path, **fields, level_field="date", level_thresholds=(4,))


def test_atomic_folder_must_hold_exactly_one_interaction_file(tmp_path):
    with pytest.raises(DataError, match="expected one \\*.inter file in the folder, found none"):
        read_dataset("atomic", tmp_path)
    for name in ("a.inter", "b.inter"):
        _write(tmp_path / name, ["user_id:token\titem_id:token", "1\t2"])
    with pytest.raises(DataError, match=r"found \['a.inter', 'b.inter'\]; pass the file"):
        read_dataset("atomic", tmp_path)
    assert read_dataset("atomic", tmp_path / "b.inter").num_events == 1


# --- Amazon ------------------------------------------------------------------------------------

def _amazon(folder: Path, lines: list[str], attrs: str | None = '{"1": [5, 6], "2": [7]}'):
    folder.mkdir(parents=True, exist_ok=True)
    txt = _write(folder / "Toy.txt", lines)
    if attrs is not None:
        (folder / "Toy_item2attributes.json").write_text(attrs)
    return txt


def test_amazon_order_attributes_and_cap(tmp_path):
    attrs = '{"1": [5, 6, 7, 8], "2": [7], "99": [1]}'
    txt = _amazon(tmp_path, ["7 1 2 1", "3 2"], attrs)
    log = read_dataset("amazon", txt, max_attributes=3)
    assert not log.has_timestamps
    assert log.user_ids[log.user].tolist() == [3, 7, 7, 7]
    assert log.item_ids[log.item].tolist() == [2, 1, 2, 1]
    assert log.time.tolist() == [0, 0, 1, 2]
    attr = log.item_features["attribute"]
    assert attr.width == 3 and (attr.values[1] > 0).sum() == 3
    assert log.skipped == {"attribute_items_not_in_log": 1, "attributes_truncated": 1}


def test_amazon_shared_beauty(shared_data):
    log = read_dataset("amazon", shared_data / "amazon-s3rec" / "Beauty.txt")
    assert (log.num_events, log.num_users, log.num_items) == (198_502, 22_363, 12_101)
    assert log.skipped == {}


@pytest.mark.parametrize("case", ["short_line", "item_id", "duplicate_user", "blank_json",
                                  "bad_json", "json_key", "json_values", "missing_json"])
def test_amazon_malformed(tmp_path, case):
    lines, attrs = ["1 1 2", "2 2 1", "3 1"], '{"1": [5], "2": [6]}'
    target, line, field = "Toy.txt", 2, None
    if case == "short_line":
        lines[1] = "2"
    elif case == "item_id":
        lines[1], field = "2 2 x1", "item_id"
    elif case == "duplicate_user":
        lines[2], line, field = "1 2", 3, "user_id"
    elif case == "blank_json":
        attrs, target, line = "", "Toy_item2attributes.json", 1
    elif case == "bad_json":
        attrs, target, line = '{"1": [5],\n "2": [6}', "Toy_item2attributes.json", 2
    elif case == "json_key":
        attrs, target, field = '{"1": [5],\n "a2": [6]}', "Toy_item2attributes.json", "item_id"
    elif case == "json_values":
        attrs, target, field = '{"1": [5],\n "2": "six"}', "Toy_item2attributes.json", \
            "attributes"
    else:
        attrs, target, line = None, "Toy_item2attributes.json", None
    txt = _amazon(tmp_path, lines, attrs)
    _expect_error(lambda: read_dataset("amazon", txt), tmp_path / target, line, field)


# --- Taobao ------------------------------------------------------------------------------------

TAOBAO = ["1,10,100,pv,1511544070", "1,10,100,cart,1511544080", "2,11,101,fav,1511544000",
          "2,10,100,buy,1511544090", "1,12,100,pv,1511544050"]


def test_taobao_levels_and_raw_counts(tmp_path):
    log = read_dataset("taobao", _write(tmp_path / "UserBehavior.csv", TAOBAO))
    assert log.behaviors == ("pv", "cart/fav", "buy")
    assert log.raw_behavior_counts == {"pv": 2, "cart": 1, "fav": 1, "buy": 1}
    assert log.behavior.tolist() == [1, 1, 2, 2, 3]  # user 1 by time: pv 12, pv 10, cart 10
    assert log.item_ids[log.item].tolist() == [12, 10, 10, 11, 10]
    cat = log.item_features["category"]
    assert cat.vocab_size == 3 and cat.values[1:, 0].tolist() == [1, 2, 1]


def test_taobao_streams_in_chunks(tmp_path, monkeypatch):
    from onepiece_jax.data.readers import _common

    rows = [f"{u},{i},{i % 7},{['pv', 'cart', 'fav', 'buy'][i % 4]},{1511544000 + i}"
            for u in range(50) for i in range(u, u + 20)]
    path = _write(tmp_path / "UserBehavior.csv", rows)
    whole = read_dataset("taobao", path)
    monkeypatch.setattr(_common, "CHUNK_BYTES", 64)  # a few lines per chunk
    chunked = read_dataset("taobao", path)
    for col in ("user", "item", "time", "behavior"):
        np.testing.assert_array_equal(getattr(whole, col), getattr(chunked, col))
    assert chunked.num_events == 1000


def test_taobao_shared_slice(shared_data):
    log = read_dataset("taobao", shared_data / "taobao-userbehavior-slice" / "UserBehavior.csv")
    assert (log.num_events, log.num_users) == (4321, 43)
    assert log.raw_behavior_counts == {"pv": 3926, "cart": 190, "fav": 128, "buy": 77}


@pytest.mark.parametrize("case", ["columns", "behavior", "timestamp", "item_id", "empty",
                                  "missing"])
def test_taobao_malformed(tmp_path, case):
    rows, line, field = list(TAOBAO), 4, None
    if case == "columns":
        rows[3] = "2,10,100,1511544090"
    elif case == "behavior":
        rows[3], field = "2,10,100,click,1511544090", "behavior"
    elif case == "timestamp":
        rows[3], field = "2,10,100,buy,nan", "timestamp"
    elif case == "item_id":
        rows[3], field = "2,1.5,100,buy,1511544090", "item_id"
    elif case == "empty":
        rows, line = [], 1
    path = tmp_path / "UserBehavior.csv"
    if case != "missing":
        _write(path, rows)
    else:
        line = None
    _expect_error(lambda: read_dataset("taobao", path), path, line, field)


# --- JDsearch ----------------------------------------------------------------------------------

def test_jdsearch_events_requests_and_features(tmp_path):
    log = read_dataset("jdsearch", _jd(tmp_path))
    assert log.behaviors == ("click", "cart", "order")
    assert log.raw_behavior_counts == {"CLICK": 2, "CART": 1, "FLW": 1, "ORD": 1}
    assert log.user_ids.tolist() == [0, 2, 3]  # raw user id = line number in the file
    assert log.time.tolist() == [1000, 1005, 1200, 1201, 1202]  # cumulative intervals
    assert log.behavior.tolist() == [1, 2, 2, 3, 1]  # FLW → cart
    assert log.item_ids[log.item].tolist() == [100, 103, 102, 102, 101]
    q = log.query_ids[log.query].tolist()
    assert q == ["", "7 8", "5 6", "5 6", ""]
    assert log.query_ids.tolist() == ["", "5 6", "7 8", "9"]  # chunk by chunk, sorted inside
    terms = log.query_features["query_terms"]
    assert terms.width == 2 and terms.vocab_size == 6
    r = log.requests
    assert r.time.tolist() == [1025, 1209]
    assert log.query_ids[r.query].tolist() == ["5 6", "9"]
    assert r.offsets.tolist() == [0, 3, 5]
    assert log.item_ids[r.cand_item].tolist() == [100, 101, 102, 101, 104]
    assert r.cand_label.dtype == np.int8 and r.cand_label.tolist() == [1, 0, 3, 0, 2]
    assert log.skipped == {"items_without_meta": 2}  # 103, 104
    brand, shop = log.item_features["brand"], log.item_features["shop"]
    i102 = int(np.flatnonzero(log.item_ids == 102)[0])
    i101 = int(np.flatnonzero(log.item_ids == 101)[0])
    assert brand.values[i102, 0] == 0 and shop.values[i101, 0] == 0 and brand.vocab_size == 3


def test_jdsearch_shared_sample(shared_data):
    log = read_dataset("jdsearch", shared_data / "jdsearch-sample")
    assert log.num_users == 3 and len(log.requests) == 3
    assert log.num_events == 182 + 46 + 2
    third = log.user == 3
    assert log.time[third].tolist() == [0, 27] and log.requests.time[2] == 49_687
    assert log.requests.cand_item.size == 90 + 89 + 83
    assert log.num_queries > 0 and log.query_features["query_terms"].width > 1


@pytest.mark.parametrize("case", ["columns", "type", "label", "time_len", "wid", "query",
                                  "negative_time", "header"])
def test_jdsearch_malformed_behaviour(tmp_path, case):
    lines, line, field, header = list(JD_LINES), 3, None, JD_HEADER
    good = lines[1].split("\t")
    edits = {"type": (5, "CART_BUY_CLICK", "history_type_list"),
             "label": (2, "0.0_x", "candidate_label_list"),
             "time_len": (6, "1200_1_1", "history_time_list"),
             "wid": (4, "102_1o2_101", "history_wid_list"),
             "query": (0, "9\x18nine", "query"),
             "negative_time": (6, "1200_1_-1_7", "history_time_list")}
    if case == "columns":
        lines[1] = "\t".join(good[:6])
    elif case == "header":
        header, line, field = header.replace("query\t", "qry\t", 1), 1, "header"
    else:
        col, value, field = edits[case]
        good[col] = value
        lines[1] = "\t".join(good)
    folder = _jd(tmp_path, lines=lines, header=header)
    _expect_error(lambda: read_dataset("jdsearch", folder), folder / "user_behavior_data.txt",
                  line, field)


@pytest.mark.parametrize("case", ["brand", "columns", "missing", "empty_behaviour"])
def test_jdsearch_malformed_meta_and_files(tmp_path, case):
    meta, target, line, field = list(META_LINES), "product_meta_data.txt", 3, None
    if case == "brand":
        meta[1], field = meta[1].replace("\t2\t", "\tB2\t"), "brand_id"
    elif case == "columns":
        meta[1] = meta[1].rsplit("\t", 1)[0]
    folder = _jd(tmp_path, meta=meta)
    if case == "missing":
        (folder / "product_meta_data.txt").unlink()
        target, line = "", None
    elif case == "empty_behaviour":
        _write(folder / "user_behavior_data.txt", [JD_HEADER])
        target, line = "user_behavior_data.txt", 2
    err = _expect_error(lambda: read_dataset("jdsearch", folder), folder / target, line, field)
    if case == "missing":
        assert "product_meta_data.txt" in str(err)


def test_blank_lines_are_counted_not_silently_dropped(tmp_path):
    path = _write(tmp_path / "UserBehavior.csv", [TAOBAO[0], "", TAOBAO[1], "  "])
    log = read_dataset("taobao", path)
    assert log.num_events == 2 and log.skipped == {"blank_lines": 2}


@pytest.mark.parametrize("precision, order", [("exact", [30, 20, 10]),
                                              ("recbole", [30, 10, 20])])
def test_recbole_time_precision_ties_only_what_recbole_cannot_tell_apart(tmp_path, precision,
                                                                         order):
    """RecBole min-max normalises ``timestamp:float`` and keeps it as float32: over
    MovieLens-100K's time range, 893000004 and 893000005 round to one value and keep their file
    order, while events 9 s apart stay in time order (raw float32 would tie all three)."""
    from onepiece_jax.config import base_config
    from onepiece_jax.data.tfds_builder import read_log

    inter = [RECBOLE_INTER[0], "1\t10\t5\t893000005", "1\t20\t4\t893000004",
             "1\t30\t3\t892999995", "2\t10\t3\t874724710", "2\t30\t1\t893286638"]
    config = base_config()
    config.dataset.update(path=str(_recbole(tmp_path / "ml", inter=inter)),
                          time_precision=precision)
    log = read_log(config)
    first_user = log.user == log.user[0]
    order_by_time = np.lexsort((np.arange(first_user.sum()), log.time[first_user]))
    assert log.item_ids[log.item[first_user][order_by_time]].tolist() == order


def test_recbole_times_keep_each_tie_groups_earliest_time():
    from onepiece_jax.data.readers.movielens import recbole_times

    times = np.array([893000005, 874724710, 893000004, 893286638, 892999995], np.int64)
    assert recbole_times(times).tolist() == [893000004, 874724710, 893000004, 893286638,
                                             892999995]


def test_float32_time_precision_is_refused_with_its_replacement():
    from onepiece_jax.config import ConfigError, base_config, validate

    config = base_config()
    config.dataset.time_precision = "float32"
    with pytest.raises(ConfigError, match="time_precision='float32'.*use 'recbole'"):
        validate(config)


def test_unknown_time_precision_is_refused_naming_the_key():
    from onepiece_jax.config import ConfigError, base_config, validate

    config = base_config()
    config.dataset.time_precision = "float16"
    with pytest.raises(ConfigError, match="config.dataset.time_precision='float16'"):
        validate(config)


@pytest.mark.parametrize("precision, label", [
    ("exact", "ml100k"), ("recbole", "ml100k (RecBole's event order)")])
def test_protocol_label_names_recboles_event_order(precision, label):
    from onepiece_jax.config import base_config
    from onepiece_jax.data.tfds_builder import dataset_label

    config = base_config()
    config.dataset.time_precision = precision
    assert dataset_label("ml100k", config) == label
