"""dataset_stats on the shared public data (exact published counts) and the ``onepiece data``
command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onepiece_jax import cli
from onepiece_jax.data.events import EventLog, identity_table
from onepiece_jax.data.readers import read_dataset
from onepiece_jax.data.stats import dataset_stats

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _stats(name: str, path) -> dict:
    stats = dataset_stats(read_dataset(name, path))
    json.dumps(stats)  # serialisable as it is
    return stats


def test_stats_ml100k(shared_data):
    s = _stats("ml100k", shared_data / "ml-100k")
    assert (s["events"], s["users"], s["items"]) == (100_000, 943, 1682)
    assert s["behaviors"] == {"watched": 6110 + 11_370 + 27_145, "rated>=4": 34_174,
                              "rated5": 21_201}
    assert s["seq_len_quantiles"]["p0"] == 20 and s["seq_len_quantiles"]["p100"] == 737
    assert s["queries"] == 0 and s["requests"] == 0 and s["has_timestamps"]


def test_stats_amazon_beauty(shared_data):
    s = _stats("amazon", shared_data / "amazon-s3rec" / "Beauty.txt")
    assert (s["events"], s["users"], s["items"]) == (198_502, 22_363, 12_101)
    assert s["behaviors"] == {"interact": 198_502} and not s["has_timestamps"]


def test_stats_taobao_slice(shared_data):
    s = _stats("taobao", shared_data / "taobao-userbehavior-slice" / "UserBehavior.csv")
    assert (s["events"], s["users"]) == (4321, 43)
    assert s["raw_behaviors"] == {"pv": 3926, "cart": 190, "fav": 128, "buy": 77}
    assert s["behaviors"] == {"pv": 3926, "cart/fav": 318, "buy": 77}


def test_stats_jdsearch_sample(shared_data):
    s = _stats("jdsearch", shared_data / "jdsearch-sample")
    assert s["users"] == 3 and s["requests"] == 3 and s["events"] == 230
    assert s["candidates"] == 262 and sum(s["candidate_labels"].values()) == 262
    assert s["skipped"] == {"items_without_meta": 12}


def test_stats_quantiles_and_counts_by_hand():
    n_users, per_user = 4, [1, 2, 3, 10]
    user = np.repeat(np.arange(1, n_users + 1), per_user).astype(np.int32)
    log = EventLog(dataset="toy", user=user, item=np.ones_like(user),
                   time=np.arange(user.size, dtype=np.int64),
                   behavior=np.where(np.arange(user.size) % 2, 2, 1).astype(np.int8),
                   query=np.zeros_like(user), behaviors=("a", "b"), has_timestamps=True,
                   item_features={"item_id": identity_table(1)},
                   user_features={"user_id": identity_table(n_users + 1)},  # one idle user
                   skipped={"x": 2})
    s = dataset_stats(log)
    q = s["seq_len_quantiles"]
    assert (q["p0"], q["p50"], q["p100"]) == (1.0, 2.5, 10.0)  # the idle user is left out
    assert s["behaviors"] == {"a": 8, "b": 8} and s["users"] == 5 and s["skipped"] == {"x": 2}


def test_cli_data_stats_prints_json(shared_data, capsys):
    assert cli.main(["data", "stats", "--dataset", "taobao", "--path",
                     str(shared_data / "taobao-userbehavior-slice" / "UserBehavior.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["events"] == 4321 and out["dataset"] == "taobao"


def test_cli_data_stats_on_own_file(tmp_path, capsys):
    path = tmp_path / "ub.csv"
    path.write_text("1,2,3,pv,100\n1,4,3,buy,200\n")
    assert cli.main(["data", "stats", "--dataset", "taobao", "--path", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["behaviors"]["buy"] == 1


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "ub.csv"
    path.write_text("1,2,3,pv,100\n1,4,3,view,200\n")
    assert cli.main(["data", "stats", "--dataset", "taobao", "--path", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "ub.csv" in err and "line 2" in err and "'behavior'" in err


def test_cli_synth_then_stats(tmp_path, capsys):
    out = tmp_path / "syn"
    assert cli.main(["data", "synth", "--out", str(out), "--users", "20", "--items", "400",
                     "--seed", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "stats", "--dataset", "jdsearch", "--path", str(out)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["users"] == 20 and s["requests"] == 20 and s["items"] == 400


def test_cli_synth_applies_knobs_and_names_an_unknown_one(tmp_path, capsys):
    args = ["data", "synth", "--users", "20", "--items", "400", "--seed", "3"]
    for name, knobs in (("default", []), ("aligned", ["--set", "end_aligned=True"])):
        assert cli.main([*args, "--out", str(tmp_path / name), *knobs]) == 0
    behaviour = [(tmp_path / name / "user_behavior_data.txt").read_bytes()
                 for name in ("default", "aligned")]
    assert behaviour[0] != behaviour[1]
    capsys.readouterr()
    assert cli.main([*args, "--out", str(tmp_path / "bad"), "--set", "end_aligend=True"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "end_aligend: unknown key" in err


def test_cli_build_passes_overrides(tmp_path, monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("onepiece_jax.data.tfds_builder")
    fake.build_from_config = lambda config_path, overrides, out_dir: seen.update(
        config=config_path, overrides=overrides, out=out_dir)
    monkeypatch.setitem(sys.modules, "onepiece_jax.data.tfds_builder", fake)
    assert cli.main(["data", "build", "--config", "c.py", "--out", str(tmp_path),
                     "--config.train.lr=0.01", "--config.model.d=32"]) == 0
    assert seen == {"config": "c.py", "overrides": ["--config.train.lr=0.01",
                                                    "--config.model.d=32"], "out": str(tmp_path)}


def test_cli_rejects_stray_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["data", "fetch", "ml100k", "--out", "x", "--config.a=1"])
    assert info.value.code == 2


def test_stats_of_a_config_read_the_data_as_training_does(tmp_path, capsys):
    """A funnel, an event order or ranking requests are the config's, not the reader's
    defaults: ``--config`` counts what training will see."""
    inter = tmp_path / "mine.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{u * 100 + i}\n"
                               for u in range(1, 6) for i in range(1, 8)))
    funnel = ["--config.dataset.level_field=rating", "--config.dataset.level_thresholds=4,5",
              "--config.context.pa_groups=rating>=5,rating>=4,interact"]
    assert cli.main(["data", "stats", "--config", str(CONFIGS / "atomic_onepiece.py"),
                     f"--config.dataset.path={inter}", *funnel]) == 0
    out = json.loads(capsys.readouterr().out)
    ratings = [1 + (u * i) % 5 for u in range(1, 6) for i in range(1, 8)]
    assert out["events"] == 35
    assert out["behaviors"] == {"interact": sum(r < 4 for r in ratings),  # each event's level
                                "rating>=4": ratings.count(4), "rating>=5": ratings.count(5)}
    assert cli.main(["data", "stats", "--dataset", "atomic", "--path", str(inter)]) == 0
    assert json.loads(capsys.readouterr().out)["behaviors"] == {"interact": 35}


@pytest.mark.parametrize("argv, says", [
    (["--dataset", "atomic"], "--dataset needs --path"),
    (["--dataset", "atomic", "--path", "x", "--config.seed=1"], "takes no --config.NAME"),
    (["--config", "c.py", "--path", "x"], "write --config.dataset.path=PATH"),
    (["--config", "c.py", "--dataset", "atomic"], "not both"),
    ([], "give --dataset and --path, or --config"),
])
def test_stats_names_what_is_missing_or_extra_in_its_arguments(argv, says, capsys):
    assert cli.main(["data", "stats", *argv]) == 2
    assert says in capsys.readouterr().err
