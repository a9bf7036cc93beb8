"""The experiment runner: configs resolve from suites as data, bad input names the suite, variant
and key, runs are cached / resumed / moved aside by config hash, and the smallest suite runs end
to end on the tiny budget (training, popularity scoring, attention maps, report)."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from onepiece_jax.config import ConfigError, apply_overrides, base_config
from onepiece_jax.experiments import runner
from onepiece_jax.experiments.runner import (
    Run,
    ensure_data,
    execute,
    override_args,
    plan_runs,
    resolve_run,
    run_status,
    run_suite,
)
from onepiece_jax.experiments.suites import RANKING, Suite, Variant, get_suite
from onepiece_jax.train.loop import train_and_evaluate


def test_overrides_round_trip_through_the_command_line_parser():
    config = base_config()
    apply_overrides(config, override_args({"model.use_pa": False, "tasks": ("click", "next"),
                                           "loss.eta": 0.5, "train.max_steps": 7,
                                           "context.pa_groups": ("order",)}))
    assert config.model.use_pa is False and config.tasks == ("click", "next")
    assert config.loss.eta == 0.5 and config.train.max_steps == 7
    assert config.context.pa_groups == ("order",)


def test_unknown_override_key_names_suite_variant_and_key(tmp_path):
    suite = Suite("mine", "t", "p", (Variant("bad", "bad", "synthetic", RANKING,
                                             {"model.no_such_field": 1}),))
    with pytest.raises(ConfigError, match=r"suite 'mine', variant 'bad'.*model\.no_such_field"):
        resolve_run(suite, suite.variants[0], 0, "tiny", data_path=tmp_path, out=tmp_path,
                    data_id=None)


def test_cli_lists_suites_and_rejects_unknown_names(capsys):
    from onepiece_jax.cli import main

    assert main(["experiment", "--list"]) == 0
    assert "block_size" in capsys.readouterr().out
    assert main(["experiment", "--suite", "table2"]) == 2
    assert "unknown suite 'table2'" in capsys.readouterr().err
    assert main(["experiment", "--suite", "block_size", "--budget", "huge"]) == 2
    assert "unknown budget 'huge'" in capsys.readouterr().err
    assert main(["experiment", "--suite", "block_size", "--variants", "m1", "m99"]) == 2
    assert "--variants 'm99' matches no variant of suite 'block_size'" in capsys.readouterr().err


def test_missing_public_dataset_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="Beauty.*S3Rec"):
        ensure_data("beauty", "tiny", data_dir=tmp_path, out=tmp_path)


def test_synthetic_worlds_are_generated_once_per_world_and_size(tmp_path):
    path = ensure_data("synthetic_no_intent", "tiny", data_dir=tmp_path, out=tmp_path)
    stamp = json.loads((path / "synth.json").read_text())
    assert stamp["knobs"] == {"query_intent": False} and stamp["users"] == 300
    mtime = (path / "user_behavior_data.txt").stat().st_mtime_ns
    assert ensure_data("synthetic_no_intent", "tiny", data_dir=tmp_path, out=tmp_path) == path
    assert (path / "user_behavior_data.txt").stat().st_mtime_ns == mtime
    assert ensure_data("synthetic", "tiny", data_dir=tmp_path, out=tmp_path) != path


def test_invocations_starting_together_generate_a_synthetic_world_once(tmp_path, monkeypatch):
    """Array tasks on one --out start at once: one generates, the others wait and reuse it
    (before, each wrote into the same scratch folder and removed the others')."""
    from onepiece_jax.data.readers import synthetic
    from onepiece_jax.data.readers.jdsearch import is_world

    real, calls = synthetic.generate_synthetic, []

    def slow(*args, **kwargs):
        calls.append(args)
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_synthetic", slow)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(
        ensure_data("synthetic", "tiny", data_dir=tmp_path, out=tmp_path / "out")))
        for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1 and is_world(paths[0])


def test_runs_share_a_build_when_their_data_and_context_agree(tmp_path):
    runs = plan_runs(get_suite("ranking_strategy"), seeds=2, budget="tiny", out=tmp_path,
                     data_dir=tmp_path, prepare=False)
    builds = {(r.variant.data, r.seed): r.config.dataset.build_dir for r in runs}
    assert len(set(builds.values())) == 4  # 2 datasets x 2 seeds
    assert len({r.digest for r in runs}) == len(runs)
    assert all(r.workdir == tmp_path / "ranking_strategy" / r.variant.name / f"seed{r.seed}"
               for r in runs)


def _fake_run(tmp_path: Path, digest: str) -> Run:
    variant = Variant("v", "v", "synthetic", RANKING)
    return Run("s", variant, 0, "tiny", base_config(), (), tmp_path / "s" / "v" / "seed0", digest,
               data_id="")  # synthetic logs are named by their folder; base_config's path is ""


def test_status_cached_partial_stale_and_foreign(tmp_path):
    run = _fake_run(tmp_path, "aaa")
    assert run_status(run) == "new"
    run.workdir.mkdir(parents=True)
    runner._write_record(run, status="running")
    assert run_status(run) == "partial"
    (run.workdir / "results.json").write_text("{}")
    assert run_status(run) == "done"
    changed = _fake_run(tmp_path, "bbb")
    assert run_status(changed) == "stale"
    moved = runner._move_aside(changed)
    assert moved.parent == tmp_path / "s" / "_stale" / "v" and (moved / "results.json").is_file()
    assert run_status(changed) == "new"
    changed.workdir.mkdir(parents=True)
    (changed.workdir / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match="not made by `onepiece experiment`"):
        run_status(changed)


def test_a_default_added_since_a_run_finished_keeps_it_cached(tmp_path):
    """A key new in the defaults (as eval.max_examples once was) changes every config's hash;
    a finished run whose stored config lacks it still counts as done if it holds the default,
    from the record's config or, for records older than that, the workdir's config.json."""
    config = base_config()
    run = dataclasses.replace(_fake_run(tmp_path, ""), config=config)
    run = dataclasses.replace(run, digest=runner.run_digest(config.to_dict(), run.variant, ""))
    run.workdir.mkdir(parents=True)
    runner._write_record(run, status="done")
    (run.workdir / "results.json").write_text("{}")
    record = json.loads((run.workdir / runner.RECORD).read_text())
    del record["config"]["eval"]["max_examples"]
    record["digest"] = "older"
    (run.workdir / runner.RECORD).write_text(json.dumps(record))
    assert run_status(run) == "done"
    changed = base_config()
    changed.eval.max_examples = 100  # the new key set to something else: really another config
    assert run_status(dataclasses.replace(
        run, config=changed, digest=runner.run_digest(changed.to_dict(), run.variant, ""))
    ) == "stale"
    (run.workdir / "config.json").write_text(json.dumps(record.pop("config")))
    (run.workdir / runner.RECORD).write_text(json.dumps(record))
    assert run_status(run) == "done"
    (run.workdir / "config.json").unlink()
    assert run_status(run) == "stale"


def test_public_data_is_identified_by_its_files_not_their_place(tmp_path):
    data = tmp_path / "a" / "ml-100k"
    data.mkdir(parents=True)
    (data / "ml-100k.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    (data / "ml-100k.item").write_text("item_id:token\n2\n")
    first = runner.data_identity("ml100k", data)
    assert first.startswith("sha256:")
    copy = tmp_path / "b" / "elsewhere"
    shutil.copytree(data, copy)
    (copy / ".DS_Store").write_text("finder")
    assert runner.data_identity("ml100k", copy) == first
    (copy / "ml-100k.item").write_text("item_id:token\n3\n")  # same size, other content
    assert runner.data_identity("ml100k", copy) != first
    (copy / "ml-100k.item").rename(copy / "ml-100k.items")
    assert runner.data_identity("ml100k", copy) not in (first, None)
    beauty = tmp_path / "amazon" / "Beauty.txt"
    beauty.parent.mkdir()
    beauty.write_text("1 2 3\n")
    (beauty.parent / "Sports.txt").write_text("4 5\n")
    alone = runner.data_identity("beauty", beauty)
    (beauty.parent / "Beauty_item2attributes.json").write_text("{}")  # read beside Beauty.txt
    with_attributes = runner.data_identity("beauty", beauty)
    assert alone.startswith("sha256:") and with_attributes != alone
    (beauty.parent / "Sports.txt").write_text("6 7\n")  # another dataset in the same folder
    assert runner.data_identity("beauty", beauty) == with_attributes
    assert runner.data_identity("ml100k", tmp_path / "missing") is None
    assert runner.data_identity("synthetic", tmp_path / "x" / "synthetic-9u-9i-abc") == (
        "synthetic-9u-9i-abc")


def test_a_run_on_other_data_is_stale_and_one_whose_data_is_missing_is_unchecked(tmp_path):
    run = _fake_run(tmp_path, "aaa")
    run.workdir.mkdir(parents=True)
    runner._write_record(run, status="done")
    (run.workdir / "results.json").write_text("{}")
    for data_id, status in (("", "done"), ("sha256:other", "stale"), (None, "unchecked")):
        config = run.config.to_dict()
        other = dataclasses.replace(run, data_id=data_id,
                                    digest=runner.run_digest(config, run.variant, data_id))
        assert run_status(other) == status, data_id
    with pytest.raises(FileNotFoundError, match="variant 'v': no data at"):
        execute(dataclasses.replace(run, data_id=None))


def _popularity_suite(monkeypatch, window: int = 7 * 86_400) -> Suite:
    suite = Suite("pop", "t", "p", (Variant("pop.week", "Popularity", "synthetic", RANKING,
                                            popularity_window=window),))
    monkeypatch.setattr(runner, "get_suite", lambda name: suite)
    return suite


def test_a_moved_runs_folder_keeps_its_finished_runs_and_points_them_at_their_new_place(
        tmp_path, monkeypatch):
    _popularity_suite(monkeypatch)
    run_suite("pop", seeds=1, budget="tiny", out=tmp_path / "a", data_dir=tmp_path / "data",
              reports=tmp_path / "reports")
    shutil.move(tmp_path / "a", tmp_path / "b")
    workdir = tmp_path / "b" / "pop" / "pop.week" / "seed0"
    record = json.loads((workdir / runner.RECORD).read_text())
    assert str(tmp_path / "a") in record["config"]["dataset"]["path"]
    del record["data_id"]  # as a record written before the data's identity was kept
    (workdir / runner.RECORD).write_text(json.dumps(record))

    def no_scoring(run):
        raise AssertionError(f"{run.variant.name} scored again although cached")

    monkeypatch.setattr(runner, "_score_without_training", no_scoring)
    text = run_suite("pop", seeds=1, budget="tiny", out=tmp_path / "b",
                     data_dir=tmp_path / "data", reports=tmp_path / "reports").read_text()
    assert "runs finished: 1 of 1" in text
    record = json.loads((workdir / runner.RECORD).read_text())
    assert record["config"]["dataset"]["path"].startswith(str(tmp_path / "b"))
    assert record["config"]["dataset"]["build_dir"].startswith(str(tmp_path / "b"))
    assert record["data_id"].startswith("synthetic-") and record["status"] == "done"


def test_running_a_hard_linked_copy_of_a_runs_folder_leaves_the_original_as_it_was(
        tmp_path, monkeypatch):
    _popularity_suite(monkeypatch)
    kwargs = dict(seeds=1, budget="tiny", data_dir=tmp_path / "data", reports=tmp_path / "r")
    run_suite("pop", out=tmp_path / "a", **kwargs)
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=os.link)  # as `cp -al`
    workdir = Path("pop") / "pop.week" / "seed0"
    before = {name: (tmp_path / "a" / workdir / name).read_text()
              for name in (runner.RECORD, "config.json")}
    assert "runs finished: 1 of 1" in run_suite("pop", out=tmp_path / "b", **kwargs).read_text()
    assert str(tmp_path / "b") in (tmp_path / "b" / workdir / runner.RECORD).read_text()
    for name, text in before.items():
        assert (tmp_path / "a" / workdir / name).read_text() == text, name


def test_a_cut_short_run_record_is_an_error_naming_it(tmp_path):
    run = _fake_run(tmp_path, "aaa")
    run.workdir.mkdir(parents=True)
    (run.workdir / runner.RECORD).write_text('{"suite": "t", "dig')
    with pytest.raises(ValueError, match=f"run record {run.workdir / runner.RECORD} is not"):
        run_status(run)


def test_a_report_does_not_count_a_run_made_with_another_config(tmp_path, monkeypatch):
    kwargs = dict(seeds=1, budget="tiny", out=tmp_path / "runs", data_dir=tmp_path / "data",
                  reports=tmp_path / "reports")
    _popularity_suite(monkeypatch)
    assert "runs finished: 1 of 1" in run_suite("pop", **kwargs).read_text()
    _popularity_suite(monkeypatch, window=86_400)  # the suite's row changed since it ran
    text = run_suite("pop", report_only=True, **kwargs).read_text()
    assert "runs finished: 0 of 1" in text
    assert "| pop.week | 0 | stale: made with another config or data, not counted |" in text


def _scripted_runs(tmp_path: Path, monkeypatch, scripts: dict[str, str]
                   ) -> tuple[list[Run], list[str]]:
    """Runs whose processes are the given Python scripts, in place of real training, and the
    list of the runs started so far."""
    runs = [dataclasses.replace(_fake_run(tmp_path, name), variant=Variant(name, name,
                                                                           "synthetic", RANKING),
                                workdir=tmp_path / "s" / name / "seed0") for name in scripts]

    def start(run, *, attention, data_dir, jobs):
        log = tmp_path / f"{run.variant.name}.log"
        started.append(run.variant.name)
        with log.open("w") as f:
            proc = subprocess.Popen([sys.executable, "-c", scripts[run.variant.name]],
                                    stdout=f, stderr=subprocess.STDOUT)
        return proc, log

    started: list[str] = []
    monkeypatch.setattr(runner, "_start_process", start)
    return runs, started


SAVES_ON_SIGTERM = ("import signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
                    "time.sleep(60)\n")


def test_a_failed_run_process_is_named_with_its_log_and_stops_the_others(tmp_path,
                                                                          monkeypatch):
    runs, started = _scripted_runs(tmp_path, monkeypatch, {
        "slow": SAVES_ON_SIGTERM,
        "broken": "import time; time.sleep(0.5); print('boom: bad feature'); raise SystemExit(1)",
        "later": "print('never started')"})
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"(?s)variant 'broken'.*exit status 1.*boom: bad"):
        runner.run_in_processes(runs, jobs=2, attention=False, data_dir=tmp_path)
    assert time.perf_counter() - start < 30  # "slow" was stopped, not waited for
    assert started == ["slow", "broken"]  # nothing new starts after a failure


def test_sigterm_stops_the_running_processes_and_says_the_suite_resumes(tmp_path, monkeypatch):
    runs, started = _scripted_runs(tmp_path, monkeypatch, {
        "a": SAVES_ON_SIGTERM, "b": SAVES_ON_SIGTERM, "c": SAVES_ON_SIGTERM})
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(runner.SuitePreempted, match="stopped by SIGTERM.*resume"):
        runner.run_in_processes(runs, jobs=2, attention=False, data_dir=tmp_path)
    assert started == ["a", "b"]  # the third never starts
    assert signal.getsignal(signal.SIGTERM) is before


def test_runs_another_invocation_holds_are_left_to_it_and_taken_up_once_free(
        tmp_path, monkeypatch, lock_holder):
    """Two invocations on one --out (more processes, or hosts) share a suite: a run whose lock
    is held is not started, a run taken first elsewhere (its process exits EXIT_TAKEN) is not a
    failure, and both come back at the end: started once their holder is gone."""
    runs, started = _scripted_runs(tmp_path, monkeypatch, {
        "held": "print('ran')",
        "taken": ("import os, sys\n"
                  f"marker = {str(tmp_path / 'tried')!r}\n"
                  "if not os.path.exists(marker):\n"
                  "    open(marker, 'w').close(); sys.exit(76)\n")})
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.1)
    lock = tmp_path / "s" / "_locks" / "held-seed0.lock"
    lock.parent.mkdir(parents=True)
    holder = lock_holder(lock)
    start = runner._start_process
    holder_alive = []

    def recording(run, **kw):
        holder_alive.append((run.variant.name, holder.poll() is None))
        return start(run, **kw)

    monkeypatch.setattr(runner, "_start_process", recording)
    threading.Timer(1.5, holder.kill).start()
    runner.run_in_processes(runs, jobs=2, attention=False, data_dir=tmp_path)
    assert started == ["taken", "taken", "held"]
    assert holder_alive[-1] == ("held", False)


def test_a_single_process_suite_runs_the_rest_first_and_then_resumes_a_run_freed_by_its_holder(
        tmp_path, monkeypatch, lock_holder, capsys):
    _popularity_suite(monkeypatch)
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.1)
    lock = tmp_path / "runs" / "pop" / "_locks" / "pop.week-seed0.lock"
    lock.parent.mkdir(parents=True)
    holder = lock_holder(lock)
    scored, score = [], runner._score_without_training

    def scoring(run):
        scored.append(run.seed)
        holder.kill()  # the other invocation stops without finishing its run
        return score(run)

    monkeypatch.setattr(runner, "_score_without_training", scoring)
    text = run_suite("pop", seeds=2, budget="tiny", out=tmp_path / "runs",
                     data_dir=tmp_path / "data", reports=tmp_path / "reports").read_text()
    assert scored == [1, 0]
    assert "runs finished: 2 of 2" in text
    out = capsys.readouterr().out
    assert f"pop/pop.week seed 0 (Popularity): being run by pid {holder.pid} on " in out
    assert out.count("waiting for 1 run(s) another invocation is running: pop.week seed 0") == 1


def test_run_processes_share_accelerator_memory_unless_the_environment_says(tmp_path,
                                                                           monkeypatch):
    started = []
    monkeypatch.setattr(runner.subprocess, "Popen",
                        lambda argv, **kw: started.append((argv, kw["env"])))
    for key in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        monkeypatch.delenv(key, raising=False)
    run = _fake_run(tmp_path, "abc")
    _, log = runner._start_process(run, attention=True, data_dir=tmp_path, jobs=4)
    argv, env = started[-1]
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    assert argv[argv.index("--digest") + 1] == "abc" and argv[-1] == "--attention"
    assert log.read_text().startswith("$ ") and log.read_text().endswith("--attention\n")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    runner._start_process(run, attention=False, data_dir=tmp_path, jobs=4)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in started[-1][1]


def test_popularity_variant_is_scored_without_training(tmp_path):
    suite = Suite("pop", "t", "p", (Variant("pop", "Popularity", "synthetic", RANKING,
                                            popularity_window=7 * 86_400),))
    (run,) = plan_runs(suite, seeds=1, budget="tiny", out=tmp_path, data_dir=tmp_path)
    assert execute(run) == "scored"
    result = json.loads((run.workdir / "results.json").read_text())
    assert "popularity ranker" in result["protocol"] and "click/AUC" in result["metrics"]
    assert execute(run) == "cached"


def test_variant_patterns_run_only_the_matching_rows_and_the_report_keeps_the_rest(
        tmp_path, monkeypatch, capsys):
    # a MovieLens row too, whose data (absent here) is neither needed nor fetched when unselected
    suite = Suite("pop", "t", "p", tuple(
        Variant(f"pop.{tag}", tag, "synthetic", RANKING, popularity_window=window)
        for tag, window in (("day", 86_400), ("week", 7 * 86_400)))
        + (Variant("ml.day", "ml day", "ml100k", "ml100k_onepiece.py", popularity_window=86_400),))
    monkeypatch.setattr(runner, "get_suite", lambda name: suite)
    kwargs = dict(seeds=1, budget="tiny", out=tmp_path / "runs", data_dir=tmp_path / "data",
                  reports=tmp_path / "reports")
    text = run_suite("pop", variants=["*.week"], **kwargs).read_text()
    assert "runs finished: 1 of 3" in text
    assert "| pop.day | 0 | not started |" in text and "| pop.week | 0 | done |" in text
    assert "| ml.day | 0 | not started |" in text and not (tmp_path / "data").exists()
    assert "- **MovieLens-100K** (fetched from the recbole==1.2.1 wheel on PyPI when missing): " \
           "`ml-100k` not found, so its runs are not counted" in text
    assert "pop: 1 of 3 runs" in capsys.readouterr().out
    assert "--seeds 1 --out" in text and "--variants '*.week'`" in text  # the rows it trained
    with pytest.raises(ValueError, match=r"--variants 'pop\.month' matches no variant of suite "
                                         r"'pop'; its variants are pop\.day, pop\.week, ml\.day"):
        run_suite("pop", variants=["pop.day", "pop.month"], **kwargs)
    assert run_status(plan_runs(suite, seeds=1, budget="tiny", out=tmp_path / "runs",
                                data_dir=tmp_path / "data", prepare=False)[0]) == "new"
    assert not (tmp_path / "data").exists()  # nothing fetched, not even by the failed call


def test_reference_rows_are_the_worlds_floor_and_oracle_on_the_runs_test_split(tmp_path):
    from onepiece_jax.eval.ceiling import reference_row, world_ceiling

    suite = Suite("ref", "t", "p", tuple(
        Variant(name, name, "synthetic", RANKING, reference=name)
        for name in ("feature_floor", "oracle")))
    runs = plan_runs(suite, seeds=1, budget="tiny", out=tmp_path, data_dir=tmp_path)
    world = runs[0].config.dataset.path
    ceiling = world_ceiling(world, val_fraction=0.1, test_fraction=0.1)
    for run in runs:
        assert execute(run) == "scored" and not (run.workdir / "checkpoints").exists()
        result = json.loads((run.workdir / "results.json").read_text())
        assert result["split"] == "test" and "time split" in result["protocol"]
        assert result["metrics"] == reference_row(ceiling, run.variant.reference, 0.1)
        assert run.command.startswith(f"onepiece data ceiling --world {world} --val-fraction "
                                      "0.1 --test-fraction 0.1")
    floor, oracle = (json.loads((r.workdir / "results.json").read_text())["metrics"]
                     for r in runs)
    assert 0.5 < floor["click/AUC"] < oracle["click/AUC"]


def test_smallest_suite_end_to_end_on_the_tiny_budget(tmp_path, monkeypatch):
    """The attention suite (2 variants: retrieval and ranking OnePiece) trains, two run
    processes at once, saves attention maps and reports; running it again trains nothing."""
    kwargs = dict(seeds=1, budget="tiny", out=tmp_path / "runs", data_dir=tmp_path / "data",
                  reports=tmp_path / "reports")
    report = run_suite("attention", jobs=2, **kwargs)
    text = report.read_text()
    assert "runs finished: 2 of 2" in text and "INCOMPLETE" not in text
    for label in ("OnePiece retrieval (K=3)", "OnePiece ranking (K=3, C=12)"):
        assert f"| {label} |" in text
    assert "`onepiece train --config configs/synthetic_search_retrieval.py" in text
    assert "onepiece experiment --suite attention --budget tiny --seeds 1" in text
    for name in ("attention_retrieval.png", "attention_ranking.png", "synthetic_ranking.png",
                 "synthetic_retrieval.png"):
        path = report.parent / name
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert "| query \\ key | IH | PA | SD | R1 | R2 | R3 |" in text
    assert "| query \\ key | IH | PA | SD | CIS | R1 | R2 | R3 |" in text
    assert "| SD | 0." in text and ") | – | – | – |" in text  # mass (uniform); masked: –
    for variant in ("retrieval", "ranking"):
        saved = np.load(tmp_path / "runs" / "attention" / variant / "seed0" / "attention.npz")
        np.testing.assert_allclose(saved["uniform"].sum(axis=-1), 1.0, atol=1e-6)
        # the uniform shares use the model's own mask: zero exactly where no head ever looks
        np.testing.assert_array_equal(saved["uniform"] > 0, saved["maps"].max(axis=(0, 1)) > 0)
    logs = sorted(p.name for p in (tmp_path / "runs" / "attention" / "_logs").iterdir())
    assert logs == ["ranking-seed0.log", "retrieval-seed0.log"]

    # moved elsewhere, one run cut off before its test score: the finished one stays cached,
    # the other resumes (its stored paths rewritten, so the resume check accepts it)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "runs", moved)
    (moved / "attention" / "retrieval" / "seed0" / "results.json").unlink()
    trained = []

    def train(run):
        trained.append(run.variant.name)
        train_and_evaluate(run.config, run.workdir, progress=False)
        return "trained"

    monkeypatch.setattr(runner, "_train", train)
    kwargs["out"] = moved
    assert run_suite("attention", **kwargs).read_text().count("| done |") == 2
    assert trained == ["retrieval"]
    config = json.loads((moved / "attention" / "ranking" / "seed0" / "config.json").read_text())
    assert config["dataset"]["build_dir"].startswith(str(moved))

    def no_training(run):
        raise AssertionError(f"{run.variant.name} retrained although cached")

    monkeypatch.setattr(runner, "_train", no_training)
    assert run_suite("attention", **kwargs).read_text().count("| done |") == 2

    # its archive rebuilds the report where the runs are not: attention maps included
    elsewhere = {**kwargs, "out": tmp_path / "elsewhere", "reports": tmp_path / "reports2"}
    rebuilt = run_suite("attention", restore=[report.parent / "runs.json"], **elsewhere)

    def maps(text: str) -> str:
        return text[text.index("## Attention by segment"):text.index("## Runs")]

    assert maps(rebuilt.read_text()) == maps(report.read_text())
    assert rebuilt.read_text().count("| done (restored from runs.json) |") == 2
