"""Fault drills through real ``onepiece train`` subprocesses, plus the checkpoint-integrity unit
cases behind them.

* numerical faults: ``config.train.debug_nan_at_step`` poisons the loss inside the jitted step;
  policy ``stop`` exits 3 naming the step and metrics and saves nothing new, ``skip`` counts
  the skipped updates and stops after ``max_nonfinite_in_a_row`` in a row;
* preemption: SIGTERM at a random step, then the same command again, equals an uninterrupted
  run, with every step trained exactly once;
* checkpoint integrity: a corrupt newest checkpoint is reported and the previous one resumed;
* an unwritable workdir (or one without space for the checkpoints) fails at start.

Every subprocess trains the same tiny config (``reliability_config.py``: 2 epochs x 20 steps,
one log line per step) with a shared persistent compilation cache and
``JAX_DISABLE_MOST_OPTIMIZATIONS``, so only the first run pays for most of the compilation.
Random steps come from ``ONEPIECE_DRILL_SEED`` when set (the seed is in every failure message).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from onepiece_jax.train import loop
from onepiece_jax.train.checkpoint import MANIFEST, CheckpointError, Checkpoints
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("reliability_config.py")
STEPS_PER_EPOCH, TOTAL = 20, 40  # reliability_config.py on the planted data (asserted below)
SEED = int(os.environ.get("ONEPIECE_DRILL_SEED", random.SystemRandom().randrange(2**31)))
RNG = random.Random(SEED)
STEP_LINE = re.compile(r"^step (\d+) loss ", re.MULTILINE)


# --------------------------------------------------------------------------- harness
class Drill:
    def __init__(self, env: dict, build_dir: Path):
        self.env, self.build_dir = env, build_dir

    def cmd(self, workdir: Path, *overrides: str) -> list[str]:
        return [sys.executable, "-m", "onepiece_jax.cli", "train", "--config", str(CONFIG),
                "--workdir", str(workdir), "--no-progress",
                f"--config.dataset.build_dir={self.build_dir}", *overrides]

    def run(self, workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(workdir, *overrides), env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def drill(planted_build, tmp_path_factory) -> Drill:
    cache = tmp_path_factory.mktemp("jax_cache")
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return Drill(env, planted_build)


@pytest.fixture(scope="module")
def uninterrupted(drill, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = drill.run(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((workdir / "history.json").read_text())
    assert [h["step"] for h in history] == [STEPS_PER_EPOCH, TOTAL]
    assert _steps_logged(done.stdout) == list(range(1, TOTAL + 1))
    return workdir, done


def _steps_logged(stdout: str) -> list[int]:
    return [int(s) for s in STEP_LINE.findall(stdout)]


def _restore(workdir: Path, step: int, which: str = "checkpoints") -> tuple[dict, dict]:
    mgr = ocp.CheckpointManager(workdir / which, item_names=("state", "extra"))
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                    extra=ocp.args.JsonRestore()))
    mgr.close()
    return out["state"], dict(out["extra"])


def _max_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs))


def _counts(opt_state) -> list[int]:
    """The optimizer's own update counters (Adam and the schedule)."""
    return [int(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
            if "count" in jax.tree_util.keystr(path)]


def _ckpt_steps(workdir: Path, which: str = "checkpoints") -> list[int]:
    d = workdir / which
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- numerical faults
def test_nan_policy_stop_exits_3_and_keeps_the_last_good_checkpoint(drill, uninterrupted,
                                                                    tmp_path):
    good, _ = uninterrupted
    at = RNG.randint(STEPS_PER_EPOCH + 2, TOTAL - 1)  # after the epoch-1 checkpoint (step 20)
    workdir = tmp_path / "run"
    out = drill.run(workdir, f"--config.train.debug_nan_at_step={at}")
    why = f"seed {SEED}, NaN at step {at}\n{out.stderr[-2000:]}"
    assert out.returncode == 3, why
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and "Traceback" not in out.stderr, why
    assert errors[0].startswith(f"error: step {at}: non-finite grad_norm, loss "), why
    assert "nonfinite_policy='stop'" in errors[0], why
    assert _steps_logged(out.stdout) == list(range(1, at)), why
    # nothing new saved: the last good checkpoint is still the latest (and the best) ...
    assert _ckpt_steps(workdir) == [STEPS_PER_EPOCH] == _ckpt_steps(workdir, "best"), why
    assert not (workdir / "results.json").exists() and not (workdir / "history.json").exists()
    # ... and it is the uninterrupted run's step-20 state
    mine, _ = _restore(workdir, STEPS_PER_EPOCH)
    theirs, _ = _restore(good, STEPS_PER_EPOCH)
    assert _max_diff(mine["params"], theirs["params"]) <= 1e-6


def test_nan_policy_skip_counts_skipped_updates_and_finishes(drill, uninterrupted, tmp_path):
    good, _ = uninterrupted
    at = RNG.randint(3, STEPS_PER_EPOCH - 3)
    workdir = tmp_path / "run"
    out = drill.run(workdir, f"--config.train.debug_nan_at_step={at}",
                    "--config.train.debug_nan_steps=2", "--config.train.nonfinite_policy=skip",
                    "--config.train.max_nonfinite_in_a_row=3")
    why = f"seed {SEED}, NaN at steps {at}, {at + 1}\n{out.stderr[-2000:]}"
    assert out.returncode == 0, why
    warnings = [line for line in out.stdout.splitlines() if "update skipped" in line]
    assert warnings == [
        f"warning: step {at}: non-finite grad_norm, loss; update skipped (1 in a row, 1 in total)",
        f"warning: step {at + 1}: non-finite grad_norm, loss; update skipped (2 in a row, "
        "2 in total)"], why
    assert _steps_logged(out.stdout) == list(range(1, TOTAL + 1)), why
    assert json.loads((workdir / "results.json").read_text())["checkpoint"]["step"] == TOTAL
    state, extra = _restore(workdir, TOTAL)
    assert extra["skipped_nonfinite"] == 2 and int(state["nonfinite"]) == 0, why
    assert int(state["step"]) == TOTAL
    # the two poisoned updates were really skipped: the optimizer applied 38 updates, not 40
    assert _counts(state["opt_state"]) and set(_counts(state["opt_state"])) == {TOTAL - 2}, why
    assert set(_counts(_restore(good, TOTAL)[0]["opt_state"])) == {TOTAL}
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_nan_policy_skip_stops_after_n_in_a_row(drill, tmp_path):
    at = RNG.randint(3, STEPS_PER_EPOCH - 4)
    workdir = tmp_path / "run"
    out = drill.run(workdir, f"--config.train.debug_nan_at_step={at}",
                    "--config.train.debug_nan_steps=5", "--config.train.nonfinite_policy=skip",
                    "--config.train.max_nonfinite_in_a_row=3")
    why = f"seed {SEED}, NaN from step {at}\n{out.stderr[-2000:]}"
    assert out.returncode == 3, why
    errors = _error_lines(out.stderr)
    assert len(errors) == 1, why
    assert errors[0].startswith(f"error: step {at + 2}: non-finite grad_norm, loss; 3 non-finite "
                                "steps in a row reached config.train.max_nonfinite_in_a_row=3"), why
    assert out.stdout.count("update skipped") == 2, why
    assert _steps_logged(out.stdout) == [*range(1, at), at, at + 1], why
    assert _ckpt_steps(workdir) == [] and _ckpt_steps(workdir, "best") == [], why


# --------------------------------------------------------------------------- preemption
def _follow(proc: subprocess.Popen, lines: queue.Queue) -> threading.Thread:
    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def test_sigterm_at_a_random_step_then_resume_equals_uninterrupted(drill, uninterrupted,
                                                                   tmp_path):
    good, _ = uninterrupted
    at = RNG.randint(2, TOTAL - 4)
    workdir = tmp_path / "run"
    proc = subprocess.Popen(drill.cmd(workdir), env=drill.env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[str] = []
    err_thread = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    err_thread.start()
    lines: queue.Queue = queue.Queue()
    out_thread = _follow(proc, lines)
    seen, sent = [], None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        if line is None:
            break
        seen.append(line)
        if sent is None and line.startswith(f"step {at} loss "):
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
    rc = proc.wait(timeout=120)
    exit_seconds = time.monotonic() - sent if sent else None
    out_thread.join(5)
    err_thread.join(5)
    first = "".join(seen)
    why = f"seed {SEED}, SIGTERM after step {at}\n{first[-1500:]}\n{''.join(err)[-2000:]}"
    assert sent is not None, why
    assert rc == 0, why
    assert exit_seconds < 60, why  # bounded: at most one step or one validation pass later
    saved = re.findall(r"^preempted \(SIGTERM\): saved step (\d+);", first, re.MULTILINE)
    assert len(saved) == 1, why
    cut = int(saved[0])
    assert at <= cut < TOTAL, why
    assert _steps_logged(first) == list(range(1, cut + 1)), why
    # the checkpoint holds exactly the step it was taken at, and the data position after it
    state, extra = _restore(workdir, cut)
    position = extra["iterator"]["epoch"] * STEPS_PER_EPOCH + extra["iterator"]["position"]
    assert int(state["step"]) == cut == position, (why, extra["iterator"])

    second = drill.run(workdir)
    why = f"{why}\n--- resumed:\n{second.stdout[-1500:]}\n{second.stderr[-2000:]}"
    assert second.returncode == 0, why
    assert f"resumed from step {cut} " in second.stdout, why
    # every step trained exactly once across the two processes
    assert _steps_logged(first) + _steps_logged(second.stdout) == list(range(1, TOTAL + 1)), why
    mine, mine_extra = _restore(workdir, TOTAL)
    theirs, theirs_extra = _restore(good, TOTAL)
    assert int(mine["step"]) == TOTAL and set(_counts(mine["opt_state"])) == {TOTAL}
    assert _max_diff(mine["params"], theirs["params"]) <= 1e-6, why
    assert [h["step"] for h in mine_extra["history"]] == [STEPS_PER_EPOCH, TOTAL]
    assert (json.loads((workdir / "results.json").read_text())["metrics"]
            == json.loads((good / "results.json").read_text())["metrics"])


def test_sigint_is_caught_and_the_handlers_restored():
    before = signal.getsignal(signal.SIGINT)
    with loop._PREEMPTION as preempt, loop._PREEMPTION:  # re-entrant, as in train_and_evaluate
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert preempt.requested and preempt.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- checkpoint integrity
def _corrupt(step_dir: Path, how: str, target: str) -> str:
    files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    pick = {"state-data": lambda: [p for p in files if "/state/" in p.as_posix()][-1],
            "extra": lambda: step_dir / "extra" / "metadata",
            "metadata": lambda: step_dir / "_CHECKPOINT_METADATA",
            "manifest": lambda: step_dir / MANIFEST}[target]()
    data = pick.read_bytes()
    if how == "truncate":
        pick.write_bytes(data[: len(data) // 2])
    elif how == "garble":
        mid = len(data) // 2
        pick.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 8]) + data[mid + 8:])
    elif how == "empty":
        pick.write_bytes(b"")
    else:
        pick.unlink()
    return pick.relative_to(step_dir).as_posix()


def _small_state(v: float) -> dict:
    return {"w": np.full((16, 8), v, np.float32), "b": np.arange(5, dtype=np.float32) * v,
            "step": np.asarray(int(v), np.int32)}


@pytest.mark.parametrize("target", ["state-data", "extra", "metadata", "manifest"])
@pytest.mark.parametrize("how", ["truncate", "garble", "empty", "delete"])
def test_restore_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, capsys, how, target):
    ckpts = Checkpoints(tmp_path, keep=3)
    for s in (1, 2, 3):
        ckpts.save(s, _small_state(s), {"step": s}, best_value=float(s))
    ckpts.close()
    rel = _corrupt(tmp_path / "checkpoints" / "3", how, target)
    ckpts = Checkpoints(tmp_path, keep=3)
    state, extra, step = ckpts.restore(_small_state(0))
    report = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    if (how, target) == ("delete", "manifest"):  # intact but unverifiable: read, not rejected
        assert (step, extra, report) == (3, {"step": 3}, [])
        return
    assert (step, extra, float(state["w"][0, 0])) == (2, {"step": 2}, 2.0), (how, rel)
    assert len(report) == 1 and "checkpoint step 3 " in report[0], report
    assert "corrupt" in report[0] and "falling back to step 2" in report[0], report
    assert (tmp_path / "corrupt" / "checkpoints-3").is_dir() and ckpts.steps() == [1, 2]
    ckpts.save(3, _small_state(3), {"step": 3}, best_value=3.0)  # retrained step 3 saves again
    assert ckpts.restore(_small_state(0))[2] == 3 and ckpts.restore(_small_state(0), "best")[2] == 3
    ckpts.close()


def test_no_readable_checkpoint_and_a_corrupt_best_are_clear_errors(tmp_path, capsys):
    ckpts = Checkpoints(tmp_path, keep=2)
    for s in (1, 2):
        ckpts.save(s, _small_state(s), {"step": s}, best_value=float(s))
    _corrupt(tmp_path / "best" / "2", "garble", "state-data")
    with pytest.raises(CheckpointError, match=r"checkpoint best \(step 2\).*corrupt"):
        ckpts.restore(_small_state(0), "best")
    for s in (1, 2):
        _corrupt(tmp_path / "checkpoints" / str(s), "truncate", "state-data")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        ckpts.restore(_small_state(0))
    reports = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warn")]
    assert len(reports) == 2  # one line per bad step
    ckpts.close()


def test_corrupt_newest_checkpoint_run_resumes_from_the_previous_one(drill, uninterrupted,
                                                                     tmp_path):
    good, _ = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(good, workdir)
    assert _ckpt_steps(workdir) == [STEPS_PER_EPOCH, TOTAL]
    newest = workdir / "checkpoints" / str(TOTAL)
    broken = [_corrupt(newest, "truncate", "state-data"), _corrupt(newest, "garble", "extra")]
    out = drill.run(workdir)
    why = f"corrupted {broken}\n{out.stdout[-1500:]}\n{out.stderr[-2000:]}"
    assert out.returncode == 0, why
    reports = [line for line in out.stderr.splitlines() if line.startswith("warning: checkpoint")]
    assert len(reports) == 1, why
    assert reports[0].startswith(f"warning: checkpoint step {TOTAL} in "), why
    assert "is corrupt (" in reports[0], why
    assert f"falling back to step {STEPS_PER_EPOCH}" in reports[0], why
    assert f"resumed from step {STEPS_PER_EPOCH} " in out.stdout, why
    assert _steps_logged(out.stdout) == list(range(STEPS_PER_EPOCH + 1, TOTAL + 1)), why
    assert (workdir / "corrupt" / f"checkpoints-{TOTAL}").is_dir()
    # the replayed epoch reproduces the lost checkpoint
    mine, extra = _restore(workdir, TOTAL)
    assert _max_diff(mine["params"], _restore(good, TOTAL)[0]["params"]) <= 1e-6, why
    assert [h["step"] for h in extra["history"]] == [STEPS_PER_EPOCH, TOTAL]


# --------------------------------------------------------------------------- unwritable workdir
def test_unwritable_workdir_fails_at_start(drill, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    start = time.monotonic()
    out = drill.run(blocker / "run")  # fails even as root: a path under a regular file
    assert out.returncode == 2, out.stderr[-2000:]
    assert _error_lines(out.stderr) == [line for line in out.stderr.splitlines() if line.strip()]
    assert "not writable" in out.stderr and str(blocker / "run") in out.stderr
    assert time.monotonic() - start < 60 and "step" not in out.stdout


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: directory permissions do not stop root's writes")
def test_read_only_workdir_fails_at_start(planted_build, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    workdir.chmod(0o500)
    try:
        with pytest.raises(loop.WorkdirError, match="not writable"):
            loop.train_and_evaluate(tiny_config(str(planted_build)), workdir, progress=False)
    finally:
        workdir.chmod(0o700)


def test_a_workdir_another_process_trains_in_is_refused_until_that_process_is_gone(
        planted_build, tmp_path, lock_holder):
    """Two jobs on one workdir (a double launch, a requeue while the first still runs) would
    write checkpoints into one directory: the second fails at start naming the first; once the
    first is gone, killed without cleanup, the workdir is free again."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = lock_holder(workdir / ".train.lock")
    with pytest.raises(loop.WorkdirError,
                       match=f"{workdir} is being trained by pid {holder.pid} on "):
        loop.train_and_evaluate(tiny_config(str(planted_build)), workdir, progress=False)
    assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
    holder.kill()
    holder.wait()
    with loop._training_lock(workdir):
        assert (workdir / ".train.lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_workdir_without_space_for_checkpoints_fails_before_training(drill, tmp_path):
    """A nearly full disk (``shutil.disk_usage`` patched in the subprocess) is refused once the
    size of the train state is known, before anything is trained or saved."""
    workdir = tmp_path / "run"
    patch = ("import shutil, sys; real = shutil.disk_usage; "
             "shutil.disk_usage = lambda p: real(p)._replace(free=64 * 1024); "
             "from onepiece_jax.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", patch, *drill.cmd(workdir)[3:]]
    out = subprocess.run(cmd, env=drill.env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and "MiB free; checkpoints need about" in errors[0], out.stderr
    assert _ckpt_steps(workdir) == [] and "step" not in out.stdout
