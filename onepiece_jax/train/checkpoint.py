"""Orbax checkpoints: the latest N for resuming, and the best by validation metric.

Each checkpoint holds the train state (params, optimizer state, step) and a JSON ``extra`` record:
the data iterator position, the base RNG seed, the early-stopping book-keeping and the
validation history. Restoring both reproduces an uninterrupted run exactly.

Two managers in one workdir — ``checkpoints/`` (latest N, saved synchronously so a preempted job
never leaves a half-written latest) and ``best/`` (one, chosen by the validation metric) — keep
"latest" and "best" independent: a good early epoch is never rotated out by later worse ones.

Integrity: after each save, ``integrity.json`` in the step directory records the size and SHA-256
of every file of that step. A restore first checks the step against it. ``restore("latest")``
(resuming) walks back from the newest step: a truncated, garbled or missing file — or, for a step
without ``integrity.json``, any Orbax read failure — is reported on one ``warning:`` line, the
step directory is moved to ``WORKDIR/corrupt/`` (so the step can be trained and saved again) and
the next older step is tried. An explicitly requested checkpoint (``best`` or a step number)
that is corrupt is a ``CheckpointError``; so is a workdir with no readable latest checkpoint.

Several processes (multi-host): every process calls ``save``/``restore`` (Orbax writes each array's
shards from the processes that hold them, into one directory on a shared filesystem, and restores
them into the template's shardings); process 0 alone writes manifests, moves corrupt steps and
prints warnings, and the others wait for it at a barrier.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from onepiece_jax.files import sha256_file, write_atomic
from onepiece_jax.parallel.distributed import barrier, is_primary

LATEST, BEST = "checkpoints", "best"
MANIFEST = "integrity.json"
CORRUPT = "corrupt"


class CheckpointError(ValueError):
    """No readable checkpoint where one was asked for; the message says which and why."""


class _Corrupt(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def write_manifest(step_dir: Path) -> None:
    """Records size and SHA-256 of every file under a finished step directory (atomically)."""
    files = {p.relative_to(step_dir).as_posix(): [p.stat().st_size, sha256_file(p)]
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_atomic(step_dir / MANIFEST, json.dumps({"version": 1, "files": files}), sync=True)


def verify_step(step_dir: Path) -> str | None:
    """What is wrong with a step directory according to its manifest, or None if nothing is
    (also None when there is no manifest: such a step is only checked by reading it)."""
    if not step_dir.is_dir():
        return "its directory is missing"
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = [(rel, int(size), str(digest)) for rel, (size, digest) in files.items()]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__})"
    for rel, size, digest in entries:
        path = step_dir / rel
        if not path.is_file():
            return f"{rel} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{rel} has {actual} bytes, expected {size} (truncated?)"
        if sha256_file(path) != digest:
            return f"{rel} does not match its SHA-256 (garbled)"
    return None


def _manager(directory: Path, max_to_keep: int, best: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=False,
        best_fn=(lambda m: m["value"]) if best else None,
        best_mode="max",
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "extra"))


class Checkpoints:
    """Saves and restores ``(state, extra)`` pairs under ``workdir``."""

    def __init__(self, workdir: str | Path, keep: int):
        self.workdir = Path(workdir).absolute()
        self.latest = self._open(LATEST, keep, best=False)
        self.best = self._open(BEST, 1, best=True)

    def _open(self, name: str, keep: int, best: bool) -> ocp.CheckpointManager:
        """A manager; if Orbax cannot even list the steps (it reads each step's metadata and
        metrics), the steps that fail their manifest are set aside and it tries once more."""
        directory = self.workdir / name
        try:
            return _manager(directory, keep, best)
        except Exception:
            bad = [(d, p) for d in sorted(directory.iterdir()) if d.name.isdigit()
                   if (p := verify_step(d))] if directory.is_dir() else []
            if not bad:
                raise
        for step_dir, problem in bad:
            moved = self._quarantine(name, int(step_dir.name))
            _warn(f"checkpoint step {step_dir.name} in {directory} is corrupt ({problem}); "
                  f"moved it to {moved}")
        return _manager(directory, keep, best)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, extra: dict, *, best_value: float | None = None) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  extra=ocp.args.JsonSave(extra))
        self._save(self.latest, step, args)
        if best_value is not None:
            self._save(self.best, step, args, metrics={"value": float(best_value)})

    def _save(self, mgr: ocp.CheckpointManager, step: int, args, metrics=None) -> None:
        if step in mgr.all_steps():
            # The same step trained again (a resume that fell back past a corrupt checkpoint
            # replays it): the new save replaces the old one.
            mgr.delete(step)
        mgr.save(step, args=args, metrics=metrics, force=True)
        mgr.wait_until_finished()
        barrier(f"checkpoint {step} written")
        if is_primary():
            write_manifest(self._step_dir(mgr, step))
        barrier(f"checkpoint {step} manifest")

    # ------------------------------------------------------------------ query
    def steps(self, which: str = "latest") -> list[int]:
        return sorted(self._mgr(which).all_steps())

    def _mgr(self, which: str) -> ocp.CheckpointManager:
        return self.best if which == "best" else self.latest

    @staticmethod
    def _step_dir(mgr: ocp.CheckpointManager, step: int) -> Path:
        return Path(str(mgr.directory)) / str(step)

    def resolve(self, which: str) -> tuple[str, int]:
        """``best`` | ``latest`` | a step number → (manager name, step); clear error if absent."""
        if which in ("best", "latest"):
            step = self._mgr(which).latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.workdir}: no {which} checkpoint")
            return which, step
        step = int(which)
        for name in ("latest", "best"):
            if step in self._mgr(name).all_steps():
                return name, step
        raise FileNotFoundError(f"{self.workdir}: no checkpoint at step {step}; have "
                                f"{self.steps('latest')} (latest) and {self.steps('best')} (best)")

    # ------------------------------------------------------------------ restore
    def restore(self, abstract_state: Any, which: str = "latest") -> tuple[Any, dict, int]:
        """``(state, extra, step)``. ``latest`` falls back past corrupt steps (reporting each on
        stderr); ``best`` or a step number must be intact (``CheckpointError`` otherwise)."""
        if which != "latest":
            name, step = self.resolve(which)
            try:
                return self._restore_one(name, step, abstract_state)
            except _Corrupt as e:
                raise CheckpointError(f"checkpoint {which} (step {step}) in "
                                      f"{self._step_dir(self._mgr(name), step).parent} is "
                                      f"corrupt: {e.reason}") from None
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"{self.workdir}: no latest checkpoint")
        for i, step in enumerate(steps):
            try:
                return self._restore_one("latest", step, abstract_state)
            except _Corrupt as e:
                moved = self._quarantine(LATEST, step)
                nxt = (f"falling back to step {steps[i + 1]}" if i + 1 < len(steps)
                       else "no older checkpoint left")
                _warn(f"checkpoint step {step} in {self.workdir / LATEST} is corrupt "
                      f"({e.reason}); moved it to {moved}; {nxt}")
        raise CheckpointError(f"{self.workdir / LATEST}: no readable checkpoint (steps {steps} "
                              f"were corrupt and moved to {self.workdir / CORRUPT}); rerun to "
                              "start from scratch, or restore a copy")

    def restore_params(self, which: str = "best") -> tuple[dict, dict, int]:
        """``(params, extra, step)`` of checkpoint ``which``, parameters only, as numpy arrays
        with no template: export reads a run of any mesh or optimizer this way. A run that kept
        a moving average of its parameters (``config.train.ema_decay``) is served with it, as it
        was evaluated; the average lives in the optimizer chain's state, a list that Orbax's
        partial restore would not take in part here, so the optimizer state is then read whole
        (about three times the parameters), else only the parameters are. The step must be intact
        (``CheckpointError`` otherwise)."""
        name, step = self.resolve(which)
        mgr = self._mgr(name)
        step_dir = self._step_dir(mgr, step)
        problem = verify_step(step_dir)
        if problem:
            raise CheckpointError(f"checkpoint {which} (step {step}) in {step_dir.parent} is "
                                  f"corrupt: {problem}")
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = dict(ckptr.metadata(step_dir / "state").item_metadata)
            if "params" not in tree:
                raise CheckpointError(f"{step_dir / 'state'} holds no 'params'; not a OnePiece "
                                      "train state")
            last = tree["opt_state"][-1]  # make_optimizer puts the average last in its chain
            averaged = isinstance(last, Mapping) and AVERAGED in last
            part = "opt_state" if averaged else "params"
            template = {part: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                           tree[part])}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        template)
            params = ckptr.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
                item=template, restore_args=restore_args, partial_restore=True))
            params = params["opt_state"][-1][AVERAGED] if averaged else params["params"]
        extra = mgr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
        return params, dict(extra["extra"]), step

    def _restore_one(self, name: str, step: int, abstract_state: Any) -> tuple[Any, dict, int]:
        mgr = self._mgr(name)
        step_dir = self._step_dir(mgr, step)
        problem = verify_step(step_dir)
        if problem:
            raise _Corrupt(problem)
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            out = mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
            extra = dict(out["extra"])
        except Exception as e:
            if (step_dir / MANIFEST).is_file():
                raise  # the files are intact: a real error (e.g. another model), not corruption
            raise _Corrupt(f"unreadable and without {MANIFEST}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''}") from e
        return out["state"], extra, step

    def _quarantine(self, name: str, step: int) -> Path | str:
        """Moves a corrupt step out of its manager's directory (kept for inspection)."""
        mgr = getattr(self, "latest" if name == LATEST else "best", None)
        src = self.workdir / name / str(step)
        dest = self.workdir / CORRUPT / f"{name}-{step}"
        if dest.exists():
            dest = dest.with_name(f"{dest.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        failed = None
        if is_primary():
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dest))
            except OSError as e:
                failed = f"nowhere (moving it failed: {e})"
        barrier(f"quarantined {name}/{step}")
        if failed:
            return failed
        if isinstance(mgr, ocp.CheckpointManager):
            mgr.reload()
        return dest

    def close(self) -> None:
        self.latest.close()
        self.best.close()


AVERAGED = "averaged_params"  # the field of train.step.AveragedParams, as Orbax names it


def _warn(message: str) -> None:
    if not is_primary():
        return
    print(f"warning: {' '.join(message.split())}", file=sys.stderr, flush=True)
