"""Orbax checkpoints: the latest N for resuming, and the best by validation metric.

Each checkpoint holds the train state (params, optimizer state, step) and a JSON ``extra`` record:
the data iterator position, the base RNG seed, the early-stopping book-keeping and the
validation history. Restoring both reproduces an uninterrupted run exactly.

Two managers in one workdir — ``checkpoints/`` (latest N, saved synchronously so a preempted job
never leaves a half-written latest) and ``best/`` (one, chosen by the validation metric) — keep
"latest" and "best" independent: a good early epoch is never rotated out by later worse ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"


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
        self.latest = _manager(self.workdir / LATEST, keep, best=False)
        self.best = _manager(self.workdir / BEST, 1, best=True)

    def save(self, step: int, state: Any, extra: dict, *, best_value: float | None = None) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  extra=ocp.args.JsonSave(extra))
        self.latest.save(step, args=args, force=True)
        if best_value is not None:
            self.best.save(step, args=args, metrics={"value": float(best_value)}, force=True)
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def steps(self, which: str = "latest") -> list[int]:
        return sorted(self._mgr(which).all_steps())

    def _mgr(self, which: str) -> ocp.CheckpointManager:
        return self.best if which == "best" else self.latest

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

    def restore(self, abstract_state: Any, which: str = "latest") -> tuple[Any, dict, int]:
        name, step = self.resolve(which)
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self._mgr(name).restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
        return out["state"], dict(out["extra"]), step

    def close(self) -> None:
        self.latest.close()
        self.best.close()
