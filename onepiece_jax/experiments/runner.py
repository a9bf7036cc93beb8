"""``onepiece experiment``: train and evaluate a suite's variants × seeds, resumably, then report.

Layout under ``--out`` (default ``runs/experiments``)::

    _data/synthetic-<users>u-<items>i-<hash>/   synthetic logs, generated once per world and size
    _builds/<hash>/                             built datasets, shared by every run whose
                                                data/context config (hence build key) is the same
    NAME/<variant>/seed<k>/                     one standard training workdir per run, plus
                                                experiment.json (suite, variant, seed, budget,
                                                config hash, command, wall time)
    NAME/_stale/                                runs whose config changed, moved aside
    NAME/_logs/, NAME/_locks/                   each run's log (``--jobs``) and lock

A run is cached when its ``results.json`` exists and its fully resolved config equals the one in
``experiment.json`` (compared by hash; a key added to the defaults since that run was made counts
as holding its default there, so upgrading does not retrain every finished run); a half-trained
run resumes from its latest checkpoint (the standard resume of ``train_and_evaluate``); a run
whose config changed is moved to ``_stale/`` and trained again. So the same command resumes a
half-finished suite, and a report can be regenerated at any time from what has finished
(``--report-only``); a report counts only the runs that are cached in this sense.

Where the files live is not part of a run's identity, what they hold is: the hash leaves out
``dataset.path`` and ``dataset.build_dir`` and takes in the data's identity instead (the SHA-256
of a public dataset's files, the generator settings of synthetic logs). So a runs folder that is
moved or copied elsewhere, or a ``--data-dir`` spelled another way, keeps its finished runs, while
an edited data file retrains them. A moved run is rewritten to its new paths the next time the
suite runs (its dataset build is made again at the new place: builds are cheap and keyed by path).

A run is locked while it runs, so several ``onepiece experiment`` invocations on one ``--out``
(more processes, or hosts sharing a file system) share a suite's runs: each skips the runs another
is running and comes back to them at the end, taking over (resuming) a run whose holder stopped and
waiting for the others, so that either writes the whole report.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from onepiece_jax.config import ConfigError, base_config, load_config, with_defaults
from onepiece_jax.data.fetch import fetch_ml100k
from onepiece_jax.experiments.quickstart import config_dir
from onepiece_jax.experiments.suites import (
    DATASETS,
    Suite,
    Variant,
    check_suite,
    get_budget,
    get_suite,
)
from onepiece_jax.files import (
    content_id,
    hold_lock,
    lock_holder,
    read_json,
    write_atomic,
    write_json,
)

RECORD = "experiment.json"
EXIT_PREEMPTED = 75  # a run process that was preempted and saved (EX_TEMPFAIL)
EXIT_TAKEN = 76  # a run process that found its run being run by another invocation
POLL_SECONDS = 5.0  # how often runs held by another invocation are checked again
LOCK_GRACE_SECONDS = 1.0  # a run's lock held this long on end means another process runs it
FETCHERS: Mapping[str, Callable[[Path], Path]] = {"ml100k": fetch_ml100k}
SYNTHETIC_SEED = 0  # the logs are one fixed world; seeds vary the training


class SuitePreempted(RuntimeError):
    """A run was preempted (SIGTERM/SIGINT) and saved; the same command resumes the suite."""


class RunTaken(RuntimeError):
    """Another process (another ``onepiece experiment`` on the same ``--out``) runs this run;
    ``holder`` says which (pid, host, since when)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One variant × seed, fully resolved: its config, workdir and config hash."""

    suite: str
    variant: Variant
    seed: int
    budget: str
    config: ml_collections.ConfigDict
    args: tuple[str, ...]  # the --config.KEY=VALUE overrides that give ``config``
    workdir: Path
    digest: str
    data_id: str | None  # the data's identity (``data_identity``); None: no files there

    @property
    def command(self) -> str:
        """The exact command that trains this run alone; for a reference row, the one that
        prints its scores; for the popularity ranker (no training, scored inside ``onepiece
        experiment``), the one that builds its splits."""
        config = f"configs/{self.variant.config}"
        if self.variant.trains:
            return shlex.join(["onepiece", "train", "--config", config, "--workdir",
                               str(self.workdir), *self.args])
        if self.variant.reference:
            ctx = self.config.context
            return shlex.join(["onepiece", "data", "ceiling", "--world", self.config.dataset.path,
                               "--val-fraction", str(ctx.val_fraction), "--test-fraction",
                               str(ctx.test_fraction)]) + f"  # row {self.variant.reference!r}"
        build = [a for a in self.args if not a.startswith("--config.dataset.build_dir=")]
        return (f"# popularity ranker, window {self.variant.popularity_window} s, on the splits "
                "of: " + shlex.join(["onepiece", "data", "build", "--config", config, "--out",
                                     str(self.config.dataset.build_dir), *build]))


def digest(value: Any) -> str:
    """12 hex digits of the SHA-256 of a JSON-able value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


LOCATIONS = ("path", "build_dir")  # the config.dataset keys that say where, not what


def data_identity(key: str, path: Path) -> str | None:
    """What a dataset is, wherever it lives: synthetic logs by their folder's name (a hash of
    the generator's settings, see ``data_location``), public data by its files' content
    (``files.content_id``); None when nothing is there."""
    return Path(path).name if DATASETS[key].synthetic else content_id(path)


def run_digest(config: Mapping[str, Any], variant: Variant, data_id: str | None) -> str:
    """What a finished run is cached under: its config less where its files live, the data's
    identity, and for a training-free row what scores it (the popularity window, the reference),
    which the config does not hold."""
    dataset = {k: v for k, v in config["dataset"].items() if k not in LOCATIONS}
    key = {"config": {**config, "dataset": dataset}, "data": data_id}
    if not variant.trains:
        key.update(popularity_window=variant.popularity_window, reference=variant.reference)
    return digest(key)


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"model.use_pa": False, "tasks": ("a", "b")}`` → ``--config.KEY=VALUE`` strings, parsed
    back by ``config.apply_overrides`` exactly as if typed on the command line."""

    def text(value: Any) -> str:
        if isinstance(value, tuple | list):
            return ",".join(str(v) for v in value)
        return str(value)

    return [f"--config.{key}={text(value)}" for key, value in overrides.items()]


# --------------------------------------------------------------------------- data
def data_location(key: str, budget: str, *, data_dir: Path, out: Path) -> Path:
    """Where a dataset's files are (nothing is created): a path under ``data_dir`` for public
    data, a generated folder under ``out/_data`` for synthetic logs (named by world and size)."""
    dataset = DATASETS[key]
    if not dataset.synthetic:
        return Path(data_dir) / dataset.path
    users, items = get_budget(budget).synthetic[dataset.size]
    knobs = dict(dataset.synth)
    tag = digest({"users": users, "items": items, "seed": SYNTHETIC_SEED, "knobs": knobs})
    return Path(out) / "_data" / f"synthetic-{users}u-{items}i-{tag}"


def ensure_data(key: str, budget: str, *, data_dir: Path, out: Path) -> Path:
    """The dataset's path, after generating synthetic logs or fetching a fetchable dataset if
    missing; a missing public file is an error that says where to get it."""
    from onepiece_jax.data.readers.jdsearch import is_world
    from onepiece_jax.data.readers.synthetic import SynthConfig, generate_synthetic

    dataset = DATASETS[key]
    path = data_location(key, budget, data_dir=data_dir, out=out)
    if dataset.synthetic:
        if not is_world(path):
            with _making(path):
                if not is_world(path):  # made by another invocation while this one waited
                    users, items = get_budget(budget).synthetic[dataset.size]
                    scratch = path.with_name(path.name + ".partial")
                    shutil.rmtree(scratch, ignore_errors=True)
                    generate_synthetic(scratch, num_users=users, num_items=items,
                                       seed=SYNTHETIC_SEED,
                                       config=SynthConfig(**dict(dataset.synth)))
                    shutil.rmtree(path, ignore_errors=True)
                    scratch.rename(path)
        return path
    if path.exists():
        return path
    if dataset.fetch:
        with _making(path):
            return path if path.exists() else FETCHERS[dataset.fetch](path)
    raise FileNotFoundError(f"dataset {key!r} ({dataset.title}) not found at {path}: get it from "
                            f"{dataset.source} and point --data-dir at the folder holding "
                            f"{dataset.path}")


def _making(path: Path):
    """The lock under which ``path`` is generated or fetched: invocations sharing an ``--out``
    (or a ``--data-dir``) that start together make it once, the others wait for it."""
    return hold_lock(path.with_name(f".{path.name}.lock"), wait=True)


# --------------------------------------------------------------------------- runs
def resolve_run(suite: Suite, variant: Variant, seed: int, budget: str, *, data_path: Path,
                out: Path, data_id: str | None) -> Run:
    """The run's config: the variant's config file, then the budget's overrides, the variant's
    own (which win), the seed and the data path; its dataset build goes to ``out/_builds``
    under the hash of the build key, so runs with the same data/context config share it.
    ``data_id`` is the data's identity (``data_identity``), part of the run's hash."""
    from onepiece_jax.train.loop import build_key

    overrides = {**get_budget(budget).overrides, **variant.overrides, "seed": seed,
                 "dataset.path": str(data_path)}
    args = override_args(overrides)
    try:
        config = load_config(config_dir() / variant.config, args)
    except ConfigError as e:
        raise ConfigError(f"suite {suite.name!r}, variant {variant.name!r}: {e}") from None
    build_dir = Path(out) / "_builds" / digest(build_key(config))
    config.dataset.build_dir = str(build_dir)
    args.append(f"--config.dataset.build_dir={build_dir}")
    workdir = Path(out) / suite.name / variant.name / f"seed{seed}"
    return Run(suite.name, variant, seed, budget, config, tuple(args), workdir,
               run_digest(config.to_dict(), variant, data_id), data_id)


def select_variants(suite: Suite, patterns: Sequence[str]) -> frozenset[str]:
    """The names of the suite's variants that match any of the shell-style ``patterns``
    (``synth_ranking.*``); no patterns selects them all. A pattern that matches nothing is an
    error, so a typo does not silently run nothing."""
    names = [v.name for v in suite.variants]
    if not patterns:
        return frozenset(names)
    chosen = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"--variants {pattern!r} matches no variant of suite {suite.name!r}; "
                             f"its variants are {', '.join(names)}")
        chosen.update(hits)
    return frozenset(chosen)


def plan_runs(suite: Suite, *, seeds: int, budget: str, out: Path, data_dir: Path,
              prepare: bool = True, only: frozenset[str] | None = None) -> list[Run]:
    """Every variant × seed, seed-major (all variants of seed 0 first, so a partial suite is
    already a complete table with one seed). ``prepare`` generates / fetches missing data, for
    the variants in ``only`` when it is given (the others are only located, for the report)."""
    check_suite(suite)
    get_budget(budget)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    wanted = {v.data for v in suite.variants if prepare and (only is None or v.name in only)}
    paths = {key: (ensure_data if key in wanted else data_location)(key, budget,
                                                                    data_dir=data_dir, out=out)
             for key in dict.fromkeys(v.data for v in suite.variants)}
    ids = {key: data_identity(key, path) for key, path in paths.items()}
    return [resolve_run(suite, v, seed, budget, data_path=paths[v.data], out=out,
                        data_id=ids[v.data])
            for seed in range(seeds) for v in suite.variants]


def read_record(workdir: Path) -> dict | None:
    path = Path(workdir) / RECORD
    return read_json(path, "run record") if path.is_file() else None


def run_status(run: Run) -> str:
    """``done`` (cached), ``partial`` (resumable), ``new``, ``stale`` (another config or other
    data), or ``unchecked`` (a run is there but its data is missing, so it cannot be compared)."""
    record = read_record(run.workdir)
    if record is None:
        if run.workdir.exists() and any(run.workdir.iterdir()):
            raise ValueError(f"suite {run.suite!r}, variant {run.variant.name!r}: "
                             f"{run.workdir} exists but has no {RECORD} (not made by "
                             "`onepiece experiment`); move it away")
        return "new"
    if run.data_id is None:
        return "unchecked"
    if not record_matches(record, run):
        return "stale"
    return "done" if (run.workdir / "results.json").is_file() else "partial"


def record_matches(record: Mapping[str, Any], run: Run) -> bool:
    """Whether a run record (``experiment.json``) is of ``run``: the same config and data."""
    return record.get("digest") == run.digest or _same_config(record, run)


def _same_config(record: Mapping[str, Any], run: Run) -> bool:
    """Whether the run's stored config (the record's; for records older than that, the
    workdir's ``config.json``), with keys added since filled by their defaults, its data and
    (training-free rows) what scored it are the run's now. Records older than the data's
    identity name only the data's path: its files, if still there, are what the run was made
    on."""
    stored = record.get("config")
    saved = run.workdir / "config.json"
    if stored is None and saved.is_file():
        stored = read_json(saved, "config")
    if not isinstance(stored, Mapping):
        return False
    stored = with_defaults(stored, base_config().to_dict())
    data_id = (record["data_id"] if "data_id" in record
               else data_identity(run.variant.data, Path(stored["dataset"]["path"])))
    variant = dataclasses.replace(run.variant, **record.get("scorer", {}))
    return run_digest(stored, variant, data_id) == run.digest


def _relocate(run: Run) -> None:
    """Points a moved run (its record, and ``config.json`` for ``onepiece eval`` and resuming)
    at where its data and build are now; the caller has checked that it is the same run."""
    record = read_record(run.workdir) or {}
    new = {k: run.config.dataset[k] for k in LOCATIONS}
    stored = (record.get("config") or {}).get("dataset", {})
    if record.get("digest") == run.digest and all(stored.get(k) == v for k, v in new.items()):
        return
    saved = run.workdir / "config.json"
    if saved.is_file():
        config = read_json(saved, "config")
        config["dataset"].update(new)
        write_json(saved, config)
    _write_record(run, **{k: v for k, v in record.items()
                          if k in ("status", "seconds", "restored_from")})


def _move_aside(run: Run) -> Path:
    old = read_record(run.workdir) or {}
    dest = (run.workdir.parents[1] / "_stale" / run.variant.name
            / f"seed{run.seed}-{old.get('digest', 'unknown')}-{int(time.time())}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.workdir), str(dest))
    return dest


def _write_record(run: Run, **fields: Any) -> None:
    record = {"suite": run.suite, "variant": run.variant.name, "label": run.variant.label,
              "data": run.variant.data, "seed": run.seed, "budget": run.budget,
              "digest": run.digest, "data_id": run.data_id, "command": run.command,
              "scorer": {"popularity_window": run.variant.popularity_window,
                         "reference": run.variant.reference}, **fields,
              "config": json.loads(json.dumps(run.config.to_dict(), default=str))}
    write_json(run.workdir / RECORD, record)


def _side_file(run: Run, folder: str, suffix: str) -> Path:
    """``OUT/SUITE/FOLDER/VARIANT-seedK.SUFFIX``: a run's log or lock, kept outside its workdir
    (which a changed config moves aside)."""
    return run.workdir.parents[1] / folder / f"{run.variant.name}-seed{run.seed}.{suffix}"


def run_holder(run: Run) -> str | None:
    """Who is running ``run`` now (pid, host, since when), or None."""
    return lock_holder(_side_file(run, "_locks", "lock"))


def holding(run: Run):
    """The run's lock, held for the block: ``RunTaken`` if another process holds it (for
    longer than ``run_holder``'s probe from the invocation that started this run would)."""
    return hold_lock(_side_file(run, "_locks", "lock"), grace=LOCK_GRACE_SECONDS,
                     busy=lambda holder: RunTaken(
                         f"suite {run.suite!r}, variant {run.variant.name!r}, seed {run.seed} "
                         f"is being run by {holder}", holder))


def execute(run: Run, *, attention: bool = False) -> str:
    """Brings one run to ``done``: trains (or resumes), or scores a training-free row; with
    ``attention`` also saves its segment-averaged attention maps. Returns what it did. Holds the
    run's lock meanwhile: ``RunTaken`` if another process holds it."""
    with holding(run):
        return _execute(run, attention=attention)


def _execute(run: Run, *, attention: bool) -> str:
    import jax

    status = run_status(run)
    if status == "unchecked":
        raise FileNotFoundError(f"suite {run.suite!r}, variant {run.variant.name!r}: no data at "
                                f"{run.config.dataset.path}")
    if status in ("done", "partial"):
        _relocate(run)
    if status == "done":
        if attention and not (run.workdir / "attention.npz").is_file():
            _save_attention(run)
        return "cached"
    if status == "stale":
        print(f"  config changed: previous run moved to {_move_aside(run)}", flush=True)
    previous = float((read_record(run.workdir) or {}).get("seconds", 0.0))
    run.workdir.mkdir(parents=True, exist_ok=True)
    _write_record(run, status="running", seconds=previous)
    start = time.perf_counter()
    try:
        outcome = _train(run) if run.variant.trains else _score_without_training(run)
    except BaseException as e:
        e.add_note(f"while running suite {run.suite!r}, variant {run.variant.name!r}, seed "
                   f"{run.seed} in {run.workdir}")
        _write_record(run, status="failed", seconds=previous + time.perf_counter() - start)
        raise
    seconds = previous + time.perf_counter() - start
    if outcome == "preempted":
        _write_record(run, status="preempted", seconds=seconds)
        raise SuitePreempted(f"suite {run.suite!r}, variant {run.variant.name!r}, seed "
                             f"{run.seed} was preempted and saved; rerun the same command to "
                             "resume")
    _write_record(run, status="done", seconds=round(seconds, 2))
    if attention:
        _save_attention(run)
    jax.clear_caches()  # a suite compiles dozens of models in one process
    return outcome


def _train(run: Run) -> str:
    from onepiece_jax.train.loop import train_and_evaluate

    out = train_and_evaluate(run.config, run.workdir, progress=False)
    return "preempted" if out.get("preempted") else "trained"


def _score_without_training(run: Run) -> str:
    """A reference row (scored on the raw logs) or the popularity ranker (on the run's
    build), written as a trained run's files are, so that reports read both alike."""
    if run.variant.reference:
        result = _reference_result(run)
    else:
        from onepiece_jax.experiments.popularity import evaluate_popularity
        from onepiece_jax.train.loop import ensure_built

        build = ensure_built(run.config, run.workdir)
        result = evaluate_popularity(run.config, build, int(run.variant.popularity_window))
    write_atomic(run.workdir / "config.json", run.config.to_json_best_effort(indent=1))
    write_json(run.workdir / "history.json", [])
    write_json(run.workdir / "results.json", result)
    return "scored"


def _reference_result(run: Run) -> dict[str, Any]:
    from onepiece_jax.eval.ceiling import reference_row, world_ceiling
    from onepiece_jax.eval.runner import ranking_protocol

    ctx, name = run.config.context, run.variant.reference
    ceiling = world_ceiling(run.config.dataset.path, val_fraction=ctx.val_fraction,
                            test_fraction=ctx.test_fraction)
    how = ("a logistic regression on hand-made features, fit on the training requests"
           if name == "feature_floor" else f"the generator's own odds ({name})")
    protocol = ranking_protocol(run.config.dataset.name, "test", "all candidates of a request",
                                how)
    return {"protocol": protocol, "split": "test",
            "metrics": reference_row(ceiling, name, ctx.test_fraction)}


def _save_attention(run: Run) -> None:
    from onepiece_jax.experiments.attention import save_attention_maps

    if run.variant.trains:
        save_attention_maps(run.workdir)


def default_command(name: str, *, seeds: int, budget: str, out: Path, data_dir: Path,
                    variants: Sequence[str] = (), restore: Sequence[str | Path] = ()) -> str:
    """The command a report names as its source; it keeps ``--variants``, since a report of some
    rows is reproduced by training those rows, not the whole suite, and ``--restore``, since
    the restored runs were not trained by it."""
    parts = ["onepiece", "experiment", "--suite", name, "--budget", budget, "--seeds", str(seeds)]
    if Path(out) != Path("runs/experiments"):
        parts += ["--out", str(out)]
    if Path(data_dir) != Path("data"):
        parts += ["--data-dir", str(data_dir)]
    if variants:
        parts += ["--variants", *variants]
    if restore:
        parts += ["--restore", *map(str, restore)]
    return shlex.join(parts)


def run_suite(name: str, *, seeds: int | None = None, budget: str = "small",
              out: str | Path = "runs/experiments", data_dir: str | Path = "data",
              reports: str | Path = "reports", report_only: bool = False,
              command: str | None = None, jobs: int = 1,
              variants: Sequence[str] = (), restore: Sequence[str | Path] = ()) -> Path:
    """Runs (or, with ``report_only``, only reports) a suite; returns the report's path.
    ``seeds`` defaults to the budget's (1 for the small smoke run, 3 for full); ``jobs`` > 1
    runs that many at once, each in its own process (see ``run_in_processes``). ``variants``
    (shell-style patterns) trains only the matching rows of a long suite; the report still
    covers the whole suite, with the rows not yet run marked as such. ``restore`` (reports'
    ``runs.json`` archives) first puts back the finished runs made elsewhere."""
    from onepiece_jax.experiments.archive import restore_runs
    from onepiece_jax.experiments.report import write_report

    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    suite = get_suite(name)
    seeds = get_budget(budget).seeds if seeds is None else seeds
    out, data_dir = Path(out), Path(data_dir)
    only = select_variants(suite, variants)
    runs = plan_runs(suite, seeds=seeds, budget=budget, out=out, data_dir=data_dir,
                     prepare=not report_only, only=only)
    for archive in restore:
        counts = restore_runs(archive, runs, suite=name, budget=budget)
        print(f"{archive}: " + "; ".join(f"{n} {why}" for why, n in counts.most_common()),
              flush=True)
    todo = [] if report_only else [run for run in runs if run.variant.name in only]
    command = command or default_command(name, seeds=seeds, budget=budget, out=out,
                                         data_dir=data_dir, variants=variants, restore=restore)
    start = time.perf_counter()
    if jobs == 1:
        waiting, elsewhere = list(range(1, len(todo) + 1)), _Elsewhere(todo)
        while waiting or elsewhere:
            waiting += elsewhere.freed(wait=not waiting, idle=not waiting)
            i = waiting.pop(0)
            run = todo[i - 1]
            print(f"{_heading(i, todo)}: {run_status(run)} → {run.workdir}", flush=True)
            try:
                did = execute(run, attention=suite.attention)
            except RunTaken as e:
                elsewhere.add(i, e.holder)
                continue
            print(f"[{i}/{len(todo)}] {did}", flush=True)
    elif todo:
        run_in_processes(todo, jobs=jobs, attention=suite.attention, data_dir=data_dir)
    with hold_lock(out / name / "_locks" / "report.lock", wait=True):  # tasks finish together
        path = write_report(suite, runs, budget=budget, seeds=seeds, command=command,
                            out_dir=Path(reports) / name)
    print(f"{name}: {len(todo)} of {len(runs)} runs, {time.perf_counter() - start:.0f} s; "
          f"report {path}",
          flush=True)
    return path


def _heading(i: int, runs: list[Run]) -> str:
    run = runs[i - 1]
    return f"[{i}/{len(runs)}] {run.suite}/{run.variant.name} seed {run.seed} ({run.variant.label})"


class _Elsewhere:
    """The runs (by 1-based index) that another invocation is running: this one comes back to
    them once it has run the rest, checking every ``POLL_SECONDS``, and takes up each one whose
    lock is free again (finished there: cached here; stopped there: resumed here)."""

    def __init__(self, runs: list[Run]):
        self.runs, self.held, self.checked, self.announced = runs, [], 0.0, []

    def __bool__(self) -> bool:
        return bool(self.held)

    def add(self, i: int, holder: str) -> None:
        print(f"{_heading(i, self.runs)}: being run by {holder}: left to it; this invocation "
              "comes back to it at the end, to take it up if that one stops or to wait for it",
              flush=True)
        self.held.append(i)

    def freed(self, *, wait: bool, idle: bool = True) -> list[int]:
        """The held runs whose lock is free now; with ``wait``, blocks until there is one.
        ``idle``: this invocation has nothing else to do, so it says what it waits for."""
        if idle and self.held and self.held != self.announced:
            names = ", ".join(f"{self.runs[i - 1].variant.name} seed {self.runs[i - 1].seed}"
                              for i in self.held)
            print(f"waiting for {len(self.held)} run(s) another invocation is running: {names}",
                  flush=True)
            self.announced = list(self.held)
        while self.held:
            if time.monotonic() - self.checked >= POLL_SECONDS:
                self.checked = time.monotonic()
                free = [i for i in self.held if run_holder(self.runs[i - 1]) is None]
                if free or not wait:
                    self.held = [i for i in self.held if i not in free]
                    return free
            if not wait:
                return []
            time.sleep(0.2)
        return []


# --------------------------------------------------------------------------- several at once
def run_in_processes(runs: list[Run], *, jobs: int, attention: bool, data_dir: Path) -> None:
    """Brings every run to ``done`` with up to ``jobs`` run processes at once, in the suite's
    order. On CPU a small run's time is mostly compilation, which uses one core, so one run
    compiles while another trains.

    Each process resolves its run again from the suite's definition and refuses to start if the
    config hash differs; its output goes to ``OUT/SUITE/_logs/VARIANT-seedK.log``. Runs sharing
    a dataset build wait for it (``ensure_built`` locks it). A failed run, or a SIGTERM/SIGINT to
    this process, stops new runs from starting and sends SIGTERM to the running ones, which save
    as on preemption; then the failure (with its log's tail) or ``SuitePreempted`` is raised,
    and the same command resumes the suite. Runs another invocation holds are left to it and
    come back at the end (``_Elsewhere``).
    """
    elsewhere = _Elsewhere(runs)
    running: dict[subprocess.Popen, tuple[int, Path, float]] = {}
    stopping: list[str] = []  # non-empty: no new run starts (the signals received or sent)

    def cached(i: int) -> None:
        """Run ``i`` is done: says so from this process (no new one needed for it)."""
        try:
            print(f"{_heading(i, runs)}: {execute(runs[i - 1], attention=attention)}",
                  flush=True)
        except RunTaken as e:
            elsewhere.add(i, e.holder)

    waiting = []
    for i in range(1, len(runs) + 1):
        if run_status(runs[i - 1]) == "done":
            cached(i)
        else:
            waiting.append(i)

    def stop(signum, frame):
        stopping.append(signal.Signals(signum).name)
        for proc in running:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    failure = None
    try:
        while running or ((waiting or elsewhere) and not stopping):
            waiting += elsewhere.freed(wait=False, idle=not running) if not waiting else []
            while waiting and len(running) < jobs and not stopping:
                i = waiting.pop(0)
                status, holder = run_status(runs[i - 1]), run_holder(runs[i - 1])
                if holder is not None:
                    elsewhere.add(i, holder)
                    continue
                if status == "done":  # finished meanwhile by another invocation
                    cached(i)
                    continue
                proc, log = _start_process(runs[i - 1], attention=attention, data_dir=data_dir,
                                           jobs=jobs)
                running[proc] = (i, log, time.perf_counter())
                print(f"{_heading(i, runs)}: {status} → {runs[i - 1].workdir} (log {log})",
                      flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                i, log, began = running.pop(proc)
                saved = stopping and proc.returncode in (EXIT_PREEMPTED, -signal.SIGTERM,
                                                         -signal.SIGINT)
                if proc.returncode == EXIT_TAKEN:
                    elsewhere.add(i, "another invocation, which took it first")
                elif proc.returncode == 0 or saved:
                    print(f"[{i}/{len(runs)}] {runs[i - 1].variant.name} seed "
                          f"{runs[i - 1].seed}: {'stopped and saved' if saved else 'done'}, "
                          f"{time.perf_counter() - began:.0f} s", flush=True)
                elif failure is None:
                    failure = (runs[i - 1], proc.returncode, log)
                    stop(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure is not None:
        run, code, log = failure
        lines = log.read_text(errors="replace").splitlines()[-25:] if log.is_file() else []
        where = (f"suite {run.suite!r}, variant {run.variant.name!r}, seed {run.seed} "
                 f"({run.workdir}) failed with exit status {code}; the other runs were stopped "
                 f"and saved. The end of its log {log}:\n" + "\n".join(lines))
        from onepiece_jax.cli import EXIT_NONFINITE
        from onepiece_jax.train.loop import NonFiniteError

        if code == EXIT_NONFINITE:
            raise NonFiniteError(where)
        raise RuntimeError(where)
    if stopping:
        raise SuitePreempted(f"suite {runs[0].suite!r} stopped by {stopping[0]}: the running "
                             "runs saved; rerun the same command to resume")


def _start_process(run: Run, *, attention: bool, data_dir: Path, jobs: int
                   ) -> tuple[subprocess.Popen, Path]:
    """Starts one run's process. On an accelerator each process would otherwise reserve 75% of
    its memory, so unless the environment says otherwise each gets an equal share."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not {"XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE"} & env.keys():
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / jobs:.3f}"
    log = _side_file(run, "_logs", "log")
    log.parent.mkdir(parents=True, exist_ok=True)
    out = run.workdir.parents[2]
    argv = [sys.executable, "-m", "onepiece_jax.experiments.runner", "--suite", run.suite,
            "--variant", run.variant.name, "--seed", str(run.seed), "--budget", run.budget,
            "--out", str(out), "--data-dir", str(data_dir), "--digest", run.digest,
            *(["--attention"] if attention else [])]
    with log.open("a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    return proc, log


def _run_process(argv: list[str] | None = None) -> int:
    """One run of ``run_in_processes``, in its own process; the exit status says how it ended."""
    parser = argparse.ArgumentParser(prog="python -m onepiece_jax.experiments.runner")
    for flag in ("--suite", "--variant", "--budget", "--out", "--data-dir", "--digest"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--attention", action="store_true")
    args = parser.parse_args(argv)
    suite = get_suite(args.suite)
    variant = next(v for v in suite.variants if v.name == args.variant)
    path = data_location(variant.data, args.budget, data_dir=Path(args.data_dir),
                         out=Path(args.out))
    run = resolve_run(suite, variant, args.seed, args.budget, data_path=path, out=Path(args.out),
                      data_id=data_identity(variant.data, path))
    if run.digest != args.digest:
        print(f"{args.suite}/{args.variant} seed {args.seed} resolves to config {run.digest}, "
              f"not {args.digest}: the suite changed while it ran", flush=True)
        return 1
    try:
        did = execute(run, attention=args.attention)
        print(f"{args.suite}/{args.variant} seed {args.seed}: {did}", flush=True)
    except SuitePreempted as e:
        print(e, flush=True)
        return EXIT_PREEMPTED
    except RunTaken as e:
        print(e, flush=True)
        return EXIT_TAKEN
    except Exception as e:
        traceback.print_exc()
        from onepiece_jax.cli import EXIT_NONFINITE
        from onepiece_jax.train.loop import NonFiniteError

        return EXIT_NONFINITE if isinstance(e, NonFiniteError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(_run_process())
