"""A suite's finished runs as one small JSON file, ``runs.json``, written beside every report:
each run's record, test results, validation history and attention maps, without checkpoints.
``onepiece experiment --restore FILE`` puts them back under ``--out``, where they count as
finished (cached) runs.

Why: a runs folder holds checkpoints and stays on the machine that trained it; what a report is
made of travels in this file. So a suite too long for one machine or one sitting can be run in
parts (array-job tasks or hosts without a shared file system, sittings on fresh machines) and
reported whole, and a committed report can be regenerated from its own archive. A run is put
back only where its config and data are the suite's now (the cache's own check), and only where
nothing of it is there yet: a run finished, half-trained or running here is left alone. A restored
run has no checkpoint: it is reported, not evaluated again, resumed or exported.
"""

from __future__ import annotations

import collections
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onepiece_jax.files import read_json, write_atomic, write_json

ARCHIVE = "runs.json"
FORMAT = 1
FILES = ("experiment.json", "results.json", "history.json")  # JSON files, kept as they are
MAPS = "attention.npz"  # the attention suite's maps, kept as nested lists


def pack_runs(records: Sequence, *, suite: str, budget: str) -> dict[str, Any]:
    """The archive of the finished ones of a report's ``RunRecord``s, from what the report
    already read of them (only the attention maps are read here)."""
    runs = []
    for r in records:
        if not r.done:
            continue
        files: dict[str, Any] = dict(zip(FILES, (r.record, r.result, r.history), strict=True))
        if (r.workdir / MAPS).is_file():
            with np.load(r.workdir / MAPS) as maps:
                files[MAPS] = {key: {"dtype": maps[key].dtype.str, "value": maps[key].tolist()}
                               for key in maps.files}
        runs.append({"variant": r.variant.name, "seed": r.seed, "digest": r.digest,
                     "files": files})
    return {"format": FORMAT, "suite": suite, "budget": budget, "runs": runs}


def write_archive(path: str | Path, archive: Mapping[str, Any]) -> None:
    """One run per line, so that a committed archive's diff shows which runs changed."""
    head = {k: v for k, v in archive.items() if k != "runs"}
    lines = [json.dumps(run, default=float) for run in archive["runs"]]
    text = json.dumps(head)[:-1] + ', "runs": [\n' + ",\n".join(lines) + "\n]}\n"
    write_atomic(path, text)


def read_archive(path: str | Path, *, suite: str, budget: str) -> dict[str, Any]:
    """An archive's value, checked to be this suite's and budget's; anything else is an error
    naming the file and what it holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--restore {path}: no such file (a report's {ARCHIVE})")
    archive = read_json(path, "run archive")
    if not isinstance(archive, dict) or archive.get("format") != FORMAT or not isinstance(
            archive.get("runs"), list):
        raise ValueError(f"--restore {path}: not a run archive of format {FORMAT} (a report's "
                         f"{ARCHIVE}, with 'format', 'suite', 'budget' and 'runs')")
    if (archive.get("suite"), archive.get("budget")) != (suite, budget):
        raise ValueError(f"--restore {path} holds suite {archive.get('suite')!r} at budget "
                         f"{archive.get('budget')!r}, not suite {suite!r} at budget {budget!r}")
    for i, entry in enumerate(archive["runs"]):
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or not {"experiment.json", "results.json"} <= set(files):
            raise ValueError(f"--restore {path}: run {i} lacks experiment.json or results.json")
    return archive


def restore_runs(path: str | Path, runs: Sequence, *, suite: str,
                 budget: str) -> collections.Counter:
    """Puts the archived runs of ``runs`` (``runner.Run``s of ``suite`` at ``budget``) back into
    their workdirs; returns how many were restored and, by reason, how many were not."""
    path = Path(path)
    archive = read_archive(path, suite=suite, budget=budget)
    planned = {(run.variant.name, run.seed): run for run in runs}
    counts: collections.Counter = collections.Counter()
    for entry in archive["runs"]:
        run = planned.get((entry.get("variant"), entry.get("seed")))
        counts[_restore(entry["files"], run, source=path)] += 1
    return counts


def _restore(files: Mapping[str, Any], run, *, source: Path) -> str:
    """Restores one archived run into ``run`` (None: not planned); returns what happened."""
    from onepiece_jax.experiments import runner

    if run is None:
        return "not in this plan (another variant, or a seed past --seeds)"
    if run.data_id is None:
        return "its data is missing here, so it cannot be checked"
    if not runner.record_matches(files["experiment.json"], run):
        return "made with another config or data than the suite's now"
    try:
        with runner.holding(run):
            if runner.run_status(run) != "new":
                return "already here"
            _put_back(run.workdir, files, source=source)
    except runner.RunTaken:
        return "already here"
    return "restored"


def _put_back(workdir: Path, files: Mapping[str, Any], *, source: Path) -> None:
    """Writes a run's files into a scratch folder renamed to ``workdir`` once complete, so that
    an interrupted restore leaves no half-restored run."""
    scratch = workdir.with_name(workdir.name + ".restoring")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in FILES:
        if name in files:
            value = files[name]
            if name == "experiment.json":
                value = {**value, "restored_from": str(source)}
            write_json(scratch / name, value)
    if MAPS in files:
        np.savez(scratch / MAPS, **{key: np.asarray(v["value"], dtype=v["dtype"])
                                    for key, v in files[MAPS].items()})
    if workdir.exists():
        workdir.rmdir()  # empty: run_status said "new"
    scratch.rename(workdir)
