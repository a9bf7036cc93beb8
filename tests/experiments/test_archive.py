"""The run archive beside every report (``runs.json``): runs finished on one machine are put back
on another by ``--restore`` and count as finished there, but only where their config and data
are the suite's now and nothing of them is there yet; bad archives are errors naming the file."""

import json
from pathlib import Path

import pytest

from onepiece_jax.experiments import runner
from onepiece_jax.experiments.archive import ARCHIVE, read_archive, restore_runs
from onepiece_jax.experiments.runner import plan_runs, run_status, run_suite
from onepiece_jax.experiments.suites import RANKING, Suite, Variant


def _suite(monkeypatch, window: int = 7 * 86_400) -> Suite:
    suite = Suite("pop", "t", "p", (Variant("pop.week", "Popularity", "synthetic", RANKING,
                                            popularity_window=window),))
    monkeypatch.setattr(runner, "get_suite", lambda name: suite)
    return suite


def _kwargs(tmp_path: Path, out: str, seeds: int = 1) -> dict:
    return dict(seeds=seeds, budget="tiny", out=tmp_path / out, data_dir=tmp_path / "data",
                reports=tmp_path / f"reports-{out}")


def _never_scored(monkeypatch) -> None:
    def fail(run):
        raise AssertionError(f"{run.variant.name} seed {run.seed} scored although restored")

    monkeypatch.setattr(runner, "_score_without_training", fail)


def test_runs_finished_elsewhere_are_restored_as_finished_and_reported_alike(
        tmp_path, monkeypatch, capsys):
    _suite(monkeypatch)
    first = run_suite("pop", **_kwargs(tmp_path, "a", seeds=2))
    archive = first.parent / ARCHIVE
    packed = json.loads(archive.read_text())
    assert [(r["variant"], r["seed"]) for r in packed["runs"]] == [("pop.week", 0),
                                                                   ("pop.week", 1)]
    assert len(archive.read_text().splitlines()) == 4  # one line per run
    _never_scored(monkeypatch)
    capsys.readouterr()
    second = run_suite("pop", restore=[archive], **_kwargs(tmp_path, "b", seeds=2))
    assert f"{archive}: 2 restored" in capsys.readouterr().out
    text = second.read_text()
    assert "runs finished: 2 of 2" in text and f"--restore {archive}`" in text
    assert text.count("| done (restored from runs.json) |") == 2
    results = "## Results"
    assert text[text.index(results):text.index("## Runs")] == \
        first.read_text()[first.read_text().index(results):first.read_text().index("## Runs")]
    for seed in (0, 1):
        made, put_back = (tmp_path / out / "pop" / "pop.week" / f"seed{seed}" / "results.json"
                          for out in ("a", "b"))
        assert json.loads(put_back.read_text()) == json.loads(made.read_text())
    # the restored runs' own archive restores again; runs already here are left alone
    again = run_suite("pop", restore=[second.parent / ARCHIVE], **_kwargs(tmp_path, "b", seeds=2))
    assert "runs finished: 2 of 2" in again.read_text()
    assert "2 already here" in capsys.readouterr().out


def test_only_runs_of_the_suites_config_data_and_seeds_are_restored(tmp_path, monkeypatch,
                                                                    capsys):
    _suite(monkeypatch)
    archive = run_suite("pop", **_kwargs(tmp_path, "a", seeds=2)).parent / ARCHIVE
    _never_scored(monkeypatch)
    text = run_suite("pop", restore=[archive], report_only=True,
                     **_kwargs(tmp_path, "b")).read_text()
    assert "runs finished: 1 of 1" in text
    assert "1 restored; 1 not in this plan" in capsys.readouterr().out
    _suite(monkeypatch, window=86_400)  # the suite's row changed since the archive was made
    text = run_suite("pop", restore=[archive], report_only=True,
                     **_kwargs(tmp_path, "c")).read_text()
    assert "runs finished: 0 of 1" in text and "| pop.week | 0 | not started |" in text
    assert "1 made with another config or data than the suite's now" in capsys.readouterr().out
    assert not (tmp_path / "c" / "pop" / "pop.week" / "seed0").exists()


def test_a_run_already_begun_here_is_not_overwritten_by_an_archived_one(tmp_path, monkeypatch):
    suite = _suite(monkeypatch)
    archive = run_suite("pop", **_kwargs(tmp_path, "a")).parent / ARCHIVE
    (run,) = plan_runs(suite, seeds=1, budget="tiny", out=tmp_path / "b",
                       data_dir=tmp_path / "data")
    run.workdir.mkdir(parents=True)
    runner._write_record(run, status="running", seconds=12.0)
    assert restore_runs(archive, [run], suite="pop", budget="tiny") == {"already here": 1}
    assert run_status(run) == "partial" and not (run.workdir / "results.json").exists()


def test_a_malformed_or_foreign_archive_is_an_error_naming_it(tmp_path):
    path = tmp_path / ARCHIVE
    with pytest.raises(FileNotFoundError, match=f"--restore {path}: no such file"):
        read_archive(path, suite="pop", budget="tiny")
    path.write_text('{"format": 1, "runs": [')
    with pytest.raises(ValueError, match=f"run archive {path} is not valid JSON"):
        read_archive(path, suite="pop", budget="tiny")
    path.write_text(json.dumps({"suite": "pop", "budget": "tiny", "runs": []}))
    with pytest.raises(ValueError, match="not a run archive of format 1"):
        read_archive(path, suite="pop", budget="tiny")
    path.write_text(json.dumps({"format": 1, "suite": "context", "budget": "medium", "runs": []}))
    with pytest.raises(ValueError, match="holds suite 'context' at budget 'medium', not suite "
                                         "'pop' at budget 'tiny'"):
        read_archive(path, suite="pop", budget="tiny")
    path.write_text(json.dumps({"format": 1, "suite": "pop", "budget": "tiny",
                                "runs": [{"files": {"experiment.json": {}}}]}))
    with pytest.raises(ValueError, match="run 0 lacks experiment.json or results.json"):
        read_archive(path, suite="pop", budget="tiny")
