"""Ranking evaluation: from model logits to per-task AUC / GAUC (SPEC §5, PAPER_NOTES §9 #4, #13).

The model emits every task head on every step, ``logits: f32[K+1, B, C, T]``, but only the heads
named by the training curriculum (``train.losses.task_assignment``) are trained. Each task is read
from the head of the step that supervised it; a task that no step supervised (e.g. the weak tasks
under the ``single`` strategy) is scored by the nearest supervised *stronger* task's head, because
its own head is untrained noise (falling back to the nearest weaker one if no stronger exists).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from onepiece_jax.eval.metrics import RankingMetrics


def task_readouts(
    assignment: Sequence[tuple[int, int]], num_tasks: int
) -> tuple[tuple[int, int], ...]:
    """(step, head) to read each task 0..T-1 from, given the supervised (step, task) pairs.

    A supervised task uses its own head on the last step that supervised it; an unsupervised task
    borrows the readout of the nearest supervised stronger task (higher index), else weaker.
    """
    supervised: dict[int, int] = {}
    for step, task in assignment:
        supervised[task] = max(step, supervised.get(task, step))
    if not supervised:
        raise ValueError("task_readouts: the assignment supervises no task")
    readouts = []
    for task in range(num_tasks):
        if task in supervised:
            readouts.append((supervised[task], task))
            continue
        stronger = [t for t in supervised if t > task]
        donor = min(stronger) if stronger else max(supervised)
        readouts.append((supervised[donor], donor))
    return tuple(readouts)


def task_scores(logits: jax.Array, readouts: Sequence[tuple[int, int]]) -> jax.Array:
    """``logits: f32[K+1, B, C, T]`` → f32[B, C, T]; task t is ``logits[step_t, :, :, head_t]``."""
    return jnp.stack([logits[step, :, :, head] for step, head in readouts], axis=-1)


class RankingEvaluator:
    """One ``RankingMetrics`` per task, fed batch by batch; AUC/GAUC computed exactly at the end.

    GAUC groups are whatever id is passed as ``group`` (the request id by default in the batch
    contract; pass user ids for per-user GAUC).
    """

    def __init__(self, task_names: Sequence[str]):
        self.task_names = tuple(task_names)
        self.metrics = {name: RankingMetrics() for name in self.task_names}

    def update(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        valid: np.ndarray,
        example_mask: np.ndarray,
        group: np.ndarray,
    ) -> None:
        """Adds one batch.

        Args:
          scores: f32[B, C, T] per-task scores (logits or probabilities; AUC is rank-based), e.g.
            ``task_scores(outputs["logits"], readouts)``.
          labels: f32[B, C, T] per-task labels (``cis_label``).
          valid: bool[B, C], real candidates (``cis_item > 0``).
          example_mask: bool[B].
          group: int[B] GAUC group id per example (``request``), shared by its candidates.
        """
        scores, labels = np.asarray(scores), np.asarray(labels)
        if scores.shape != labels.shape or scores.shape[-1] != len(self.task_names):
            raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be "
                             f"[B, C, T] with T = {len(self.task_names)} tasks")
        keep = np.asarray(valid, bool) & np.asarray(example_mask, bool)[:, None]
        groups = np.broadcast_to(np.asarray(group)[:, None], keep.shape)
        for index, name in enumerate(self.task_names):
            self.metrics[name].update(scores[..., index], labels[..., index], groups, keep)

    def result(self) -> dict[str, float]:
        """{"<task>/AUC", "<task>/GAUC", "<task>/count", ...} for every task."""
        return {
            f"{name}/{key}": value
            for name, metric in self.metrics.items()
            for key, value in metric.result().items()
        }
