"""Train state, optimizer and the jitted, sharded train step.

``train_step(state, batch, rng) -> (state, metrics)`` is pure: the dropout and negative-sampling
key is ``fold_in(rng, state.step)``, so a resumed run draws exactly the randomness an
uninterrupted one would. It is compiled once with the batch sharded over the mesh's ``data``
axis, everything else replicated, and the old state donated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from onepiece_jax.parallel.mesh import batch_sharding, replicated
from onepiece_jax.train import negatives
from onepiece_jax.train.objective import Objective, compute_loss


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite: jax.Array  # consecutive skipped (non-finite) updates


def make_optimizer(train_cfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, after global-norm clipping."""
    warmup = max(1, min(int(train_cfg.warmup_steps), max(total_steps - 1, 1)))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(train_cfg.learning_rate), warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.1 * float(train_cfg.learning_rate))
    return optax.chain(optax.clip_by_global_norm(float(train_cfg.clip_norm)),
                       optax.adamw(schedule, weight_decay=float(train_cfg.weight_decay)))


def init_state(model, optimizer: optax.GradientTransformation, example_batch: dict,
               catalog: dict, rng: jax.Array) -> TrainState:
    init = jax.jit(functools.partial(model.init, train=False))  # one compile, not hundreds
    variables = init({"params": rng, "dropout": rng}, example_batch, catalog)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), nonfinite=jnp.zeros((), jnp.int32))


CATEGORY_FEATURES = ("category", "cate_1", "genre", "attribute")  # readers' category tables


def negative_tables(item_count: np.ndarray, catalog: dict) -> negatives.NegativeTables:
    """Popularity from training counts; hard negatives share the item's category: the first of
    ``CATEGORY_FEATURES`` the dataset has (its first value for multi-valued features), none
    (uniform fallback) when it has no category table."""
    name = next((n for n in CATEGORY_FEATURES if n in catalog["item"]), None)
    category = (catalog["item"][name][:, 0] if name is not None
                else np.zeros(item_count.shape[0], np.int32))
    return negatives.build_negative_tables(item_count, category)


def make_train_step(model, objective: Objective, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> Callable:
    """The jitted ``train_step(state, batch, catalog, tables, rng) -> (state, metrics)``.

    The catalog and negative tables are arguments, not closed-over constants, so a large catalogue
    is not baked into the compiled program. Non-finite loss or gradients are detected inside the
    step: the update is skipped (params and optimizer state unchanged, ``nonfinite`` counted) and
    ``metrics['finite']`` is 0, so the host applies its policy (stop or skip) without a second pass.
    """

    def train_step(state: TrainState, batch: dict, catalog: dict,
                   tables: negatives.NegativeTables, rng: jax.Array):
        key = jax.random.fold_in(rng, state.step)
        # Debug hook (config.train.debug_nan_at_step): the loop adds f32[B] ``debug_loss_scale``
        # (NaN on the steps to poison, else 1) and the loss is multiplied by it. Only batches that
        # carry the key trace this branch, so a normal run compiles exactly the program without.
        scale = batch.get("debug_loss_scale")
        batch = {k: v for k, v in batch.items() if k != "debug_loss_scale"}

        def loss_fn(params):
            loss, metrics = compute_loss(objective, model, params, batch, catalog, tables, key)
            if scale is not None:
                loss = loss * jnp.mean(scale)
                metrics = {**metrics, "loss": loss}
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree_utils.tree_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite=jnp.where(finite, 0, state.nonfinite + 1))
        metrics = {**metrics, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}
        return new_state, metrics

    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(train_step, in_shardings=(rep, data, rep, rep, rep),
                   out_shardings=(rep, rep), donate_argnums=(0,))
