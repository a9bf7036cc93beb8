"""Train state, optimizer and the jitted, sharded train step (plus a legacy ``pmap`` step).

``train_step(state, batch, rng) -> (state, metrics)`` is pure: the dropout and negative-sampling
key is ``fold_in(rng, state.step)``, so a resumed run draws exactly the randomness an
uninterrupted one would. It is compiled once with the batch sharded over the mesh's ``data``
axis, the state and catalog sharded by ``parallel/rules.py`` (embedding tables and their Adam
moments split on the vocabulary axis; replicated by default) and the old state donated. GSPMD
partitions the lookups: each device gathers from its own rows and the partial rows are summed
over the table axes, so no device ever holds a whole table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax
from jax.sharding import Mesh

from onepiece_jax.parallel.mesh import batch_sharding, replicated
from onepiece_jax.parallel.rules import ShardingRules, tree_shardings
from onepiece_jax.train import negatives
from onepiece_jax.train.objective import Objective, compute_loss


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite: jax.Array  # consecutive skipped (non-finite) updates


def _warmup_cosine(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    warmup = max(1, min(warmup_steps, max(total_steps - 1, 1)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.1 * lr)


# config.train.schedule → (learning rate, warm-up steps, total steps) -> schedule
SCHEDULES = {
    "warmup_cosine": _warmup_cosine,  # linear warm-up, then cosine decay to a tenth
    "constant": lambda lr, warmup_steps, total_steps: optax.constant_schedule(lr),  # RecBole's
}


class AveragedParams(NamedTuple):
    """The state of :func:`average_params`: updates seen and the running average."""
    count: jax.Array
    averaged_params: Any


def average_params(decay: float) -> optax.GradientTransformation:
    """An exponential moving average of the parameters, as the optimizer chain's last link (its
    ``params + updates`` are the new parameters), so it lives, shards, checkpoints and is skipped
    on a non-finite step with the optimizer state, with no change to the train state.

    The average is bias-corrected as a zero-initialised EMA divided by ``1 - decay^t`` would be,
    but stored corrected, so evaluation and export read it as is: update t moves it by
    ``(1 - decay) / (1 - decay^t)`` towards the new parameters, and the first copies them.
    The updates pass through unchanged.
    """

    def init(params):
        return AveragedParams(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params):
        count = state.count + 1
        rate = (1.0 - decay) / (1.0 - jnp.power(jnp.float32(decay), count.astype(jnp.float32)))
        averaged = jax.tree.map(lambda a, p, u: a + rate.astype(a.dtype) * (p + u - a),
                                state.averaged_params, params, updates)
        return updates, AveragedParams(count, averaged)

    return optax.GradientTransformation(init, update)


def make_optimizer(train_cfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW after global-norm clipping (``clip_norm=0``: none), at the learning rate schedule
    ``SCHEDULES[train_cfg.schedule]``; with ``ema_decay > 0`` it also keeps the parameters'
    moving average (:func:`average_params`), which validation, evaluation and export then use."""
    schedule = SCHEDULES[train_cfg.schedule](
        float(train_cfg.learning_rate), int(train_cfg.warmup_steps), total_steps)
    clip = float(train_cfg.clip_norm)
    links = [optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(),
             optax.adamw(schedule, weight_decay=float(train_cfg.weight_decay))]
    if float(train_cfg.ema_decay) > 0:
        links.append(average_params(float(train_cfg.ema_decay)))
    return optax.chain(*links)


def eval_params(state: TrainState) -> Any:
    """The parameters a run is evaluated and served with: the moving average when the optimizer
    keeps one (``config.train.ema_decay > 0``), else the trained parameters."""
    last = state.opt_state[-1]  # make_optimizer puts the average last in its chain
    return last.averaged_params if isinstance(last, AveragedParams) else state.params


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), jax.dtypes.canonicalize_dtype(x.dtype)), tree)


def _fresh_state(model, optimizer: optax.GradientTransformation, shapes: Any,
                 rng: jax.Array) -> TrainState:
    # Parameters depend on shapes only, so the inputs are zeros made inside the program: nothing
    # is copied from the host and no batch has to exist on every process.
    batch, catalog = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    params = model.init({"params": rng, "dropout": rng}, batch, catalog, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), nonfinite=jnp.zeros((), jnp.int32))


def init_state(model, optimizer: optax.GradientTransformation, example_batch: dict,
               catalog: dict, rng: jax.Array, shardings: Any = None) -> TrainState:
    """A fresh state from one jitted program (one compile, not hundreds of eager ops).

    ``shardings`` (a ``TrainState`` of ``NamedSharding``, see :func:`state_shardings`) places it:
    each device draws only its own shards (threefry is partitionable), so the values are those of
    an unsharded init and a 10⁸-row table never exists whole on one device.
    """
    fn = functools.partial(_fresh_state, model, optimizer, _shapes((example_batch, catalog)))
    return jax.jit(fn, out_shardings=shardings)(rng)


def abstract_state(model, optimizer: optax.GradientTransformation, example_batch: dict,
                   catalog: dict) -> TrainState:
    """The state's shapes and dtypes (``ShapeDtypeStruct``s), computed without allocating it."""
    fn = functools.partial(_fresh_state, model, optimizer, _shapes((example_batch, catalog)))
    return jax.eval_shape(fn, jax.random.key(0))


def state_shardings(model, optimizer: optax.GradientTransformation, example_batch: dict,
                    catalog: dict, mesh: Mesh, rules: ShardingRules) -> TrainState:
    """Where every leaf of the train state lives: parameters by rule, optimizer slots like their
    parameter (the rules match the parameter's path inside the slot's path), scalars replicated."""
    return tree_shardings(abstract_state(model, optimizer, example_batch, catalog), mesh, rules)


CATEGORY_FEATURES = ("category", "cate_1", "genre", "attribute")  # readers' category tables


def negative_tables(item_count: np.ndarray, catalog: dict) -> negatives.NegativeTables:
    """Popularity from training counts; hard negatives share the item's category: the first of
    ``CATEGORY_FEATURES`` the dataset has (its first value for multi-valued features), none
    (uniform fallback) when it has no category table."""
    name = next((n for n in CATEGORY_FEATURES if n in catalog["item"]), None)
    category = (catalog["item"][name][:, 0] if name is not None
                else np.zeros(item_count.shape[0], np.int32))
    return negatives.build_negative_tables(item_count, category)


def _loss_fn(objective: Objective, model, batch: dict, catalog: dict,
             tables: negatives.NegativeTables, key: jax.Array,
             gather: Callable | None = None) -> Callable:
    """``params -> (loss, metrics)``.

    Debug hook (config.train.debug_nan_at_step): the loop adds f32[B] ``debug_loss_scale`` (NaN
    on the steps to poison, else 1) and the loss is multiplied by it. Only batches that carry the
    key trace this branch, so a normal run compiles exactly the program without.
    """
    scale = batch.get("debug_loss_scale")
    batch = {k: v for k, v in batch.items() if k != "debug_loss_scale"}

    def loss_fn(params):
        loss, metrics = compute_loss(objective, model, params, batch, catalog, tables, key,
                                     gather=gather)
        if scale is not None:
            loss = loss * jnp.mean(scale)
            metrics = {**metrics, "loss": loss}
        return loss, metrics

    return loss_fn


def _apply_gradients(optimizer: optax.GradientTransformation, state: TrainState, loss: jax.Array,
                     metrics: dict, grads: Any) -> tuple[TrainState, dict]:
    """One optimizer update, skipped (params and optimizer state kept, ``nonfinite`` counted) when
    the loss or the gradient is not finite."""
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
    metrics = {**metrics, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32),
               "nonfinite_in_a_row": new_state.nonfinite.astype(jnp.float32)}
    return new_state, metrics


def make_train_step(model, objective: Objective, optimizer: optax.GradientTransformation,
                    mesh: Mesh, state_sharding: Any = None,
                    catalog_sharding: Any = None) -> Callable:
    """The jitted ``train_step(state, batch, catalog, tables, rng) -> (state, metrics)``.

    The catalog and negative tables are arguments, not closed-over constants, so a large catalogue
    is not baked into the compiled program. ``state_sharding`` / ``catalog_sharding`` (trees of
    ``NamedSharding``; default replicated) must be where the state and catalog already live: the
    state keeps its layout from step to step. Non-finite loss or gradients are detected inside the
    step: the update is skipped and ``metrics['finite']`` is 0, so the host applies its policy
    (stop or skip) without a second pass.
    """

    def train_step(state: TrainState, batch: dict, catalog: dict,
                   tables: negatives.NegativeTables, rng: jax.Array):
        key = jax.random.fold_in(rng, state.step)
        loss_fn = _loss_fn(objective, model, batch, catalog, tables, key)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return _apply_gradients(optimizer, state, loss, metrics, grads)

    rep, data = replicated(mesh), batch_sharding(mesh)
    state_sharding = rep if state_sharding is None else state_sharding
    catalog_sharding = rep if catalog_sharding is None else catalog_sharding
    return jax.jit(train_step, in_shardings=(state_sharding, data, catalog_sharding, rep, rep),
                   out_shardings=(state_sharding, rep), donate_argnums=(0,))


# --------------------------------------------------------------------------- legacy pmap
def make_pmap_train_step(model, objective: Objective, optimizer: optax.GradientTransformation,
                         axis_name: str = "batch") -> Callable:
    """Legacy: the same step as :func:`make_train_step`, data-parallel with ``jax.pmap``.

    For stacks that still drive ``pmap``; new code should use the ``jit`` step (it also shards
    tables, which ``pmap`` cannot). Arguments: ``state`` replicated with a leading device axis
    (:func:`replicate`), ``batch`` split ``[devices, B/devices, ...]`` (:func:`split_batch`),
    ``catalog``, ``tables`` and ``rng`` unstacked (broadcast). Every device runs the model on its
    own rows; the outputs are all-gathered so the losses — whose U2I/I2U and in-batch terms span
    the batch — see the whole batch, and the gradients are averaged with ``pmean``. The result
    equals the ``jit`` step up to float summation order; with dropout > 0 the masks differ
    (drawn per device), so only the distribution is the same. Metrics come back per device
    (identical); read ``metrics[k][0]``.
    """

    def gather(tree: Any, axis: int) -> Any:
        return jax.tree.map(lambda x: lax.all_gather(x, axis_name, axis=axis, tiled=True), tree)

    def train_step(state: TrainState, batch: dict, catalog: dict,
                   tables: negatives.NegativeTables, rng: jax.Array):
        key = jax.random.fold_in(rng, state.step)
        loss_fn = _loss_fn(objective, model, batch, catalog, tables, key, gather=gather)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        # Each device's gradient holds the gathered examples' terms once per device (the
        # all-gather's transpose sums every device's copy of the loss) and the terms computed on
        # the gathered batch once: the mean over devices is the gradient of the one loss.
        grads = lax.pmean(grads, axis_name)
        return _apply_gradients(optimizer, state, loss, metrics, grads)

    return jax.pmap(train_step, axis_name=axis_name, in_axes=(0, 0, None, None, None),
                    donate_argnums=(0,))


def replicate(tree: Any, devices: int) -> Any:
    """A pytree stacked ``devices`` times on a new leading axis (``pmap``'s replicated layout)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (devices, *jnp.shape(x))), tree)


def split_batch(batch: dict, devices: int) -> dict:
    """``[B, ...]`` → ``[devices, B/devices, ...]`` for ``pmap``; B must divide evenly."""
    def split(x):
        if x.shape[0] % devices:
            raise ValueError(f"batch of {x.shape[0]} rows does not split over {devices} devices")
        return x.reshape(devices, x.shape[0] // devices, *x.shape[1:])
    return {k: split(v) for k, v in batch.items()}
