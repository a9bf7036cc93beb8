"""``train_and_evaluate(config, workdir)``: the whole job, resumable, and ``evaluate_workdir``.

A workdir holds everything of one run: ``config.json``, the built dataset (unless
``config.dataset.build_dir`` points elsewhere), Orbax checkpoints (latest N and best),
TensorBoard event files under ``tb/``, ``history.json`` (the metrics of every validation: each
epoch, or every ``config.train.eval_every_steps`` steps) and ``results.json`` (the final
evaluation, with its protocol string). Calling it again on the same workdir resumes from the
latest checkpoint — at the exact batch where it stopped.

Scale-out (``config.mesh``, ``config.distributed``): the state and catalog are sharded by
``parallel/rules.py``; with several processes (one per host) each one reads only its rows of every
training batch, checkpoints are written by all of them together (Orbax), and process 0 alone
writes ``config.json``, ``params.txt``, TensorBoard events, ``history.json`` and the results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import traverse_util
from tensorboardX import SummaryWriter

from onepiece_jax.config import ConfigError, from_stored
from onepiece_jax.data.context import ContextConfig
from onepiece_jax.data.events import EventLog
from onepiece_jax.data.loader import (
    BatchIterator,
    BuiltDataset,
    device_batch,
    num_rows,
    take_rows,
)
from onepiece_jax.data.tfds_builder import build, dataset_label, read_log
from onepiece_jax.eval.ranking import task_readouts, task_scores
from onepiece_jax.eval.retrieval import catalogue_layout, catalogue_vectors
from onepiece_jax.eval.runner import eval_subset, evaluate_ranking, evaluate_retrieval
from onepiece_jax.files import (
    content_id,
    hold_lock,
    read_json,
    write_atomic,
    write_json,
)
from onepiece_jax.model.config import from_config as model_config_from
from onepiece_jax.model.onepiece import OnePiece, param_summary
from onepiece_jax.parallel import distributed
from onepiece_jax.parallel.mesh import (
    check_batch_size,
    mesh_from_config,
    process_rows,
    put_batch,
    put_global,
    replicated,
)
from onepiece_jax.parallel.rules import (
    ShardingRules,
    catalog_shardings,
    pad_catalog,
    vocab_multiple,
)
from onepiece_jax.train.checkpoint import Checkpoints
from onepiece_jax.train.objective import Objective
from onepiece_jax.train.step import (
    abstract_state,
    eval_params,
    init_state,
    make_optimizer,
    make_train_step,
    negative_tables,
    state_shardings,
)


class NonFiniteError(RuntimeError):
    """Training hit a non-finite loss or gradient: under the ``stop`` policy at once, under
    ``skip`` after ``config.train.max_nonfinite_in_a_row`` consecutive skipped updates."""


class WorkdirError(ValueError):
    """The workdir cannot hold the run (not writable, or too little free space); raised at start.
    A ``ValueError``, so the CLI reports it on one ``error:`` line (exit status 2)."""


# --------------------------------------------------------------------------- data
def build_key(config) -> dict:
    """What identifies a dataset build: two configs with equal keys can share one build."""
    return {"dataset": config.dataset.to_dict(), "context": config.context.to_dict(),
            "mode": config.mode, "tasks": list(config.tasks), "seed": config.seed}


STAMP = "build_key.json"  # a build's key, written when the build is complete
DATA_CONTENT = "data_content"  # in the stamp: content_id of config.dataset.path when built


def _build_dir(config, workdir: Path) -> Path:
    return Path(config.dataset.build_dir) if config.dataset.build_dir else Path(workdir) / "data"


def same_data(old: str, new: str, recorded: str | None) -> bool:
    """Whether dataset path ``new`` holds the files ``old`` held when a build or run was made:
    by their recorded ``content_id``, else (builds from before it was kept) by ``old``'s files if
    still there. So a dataset moved, copied (e.g. staged to a node's local disk) or spelled
    otherwise (relative, another working directory) is the same data."""
    if old == new:
        return True
    now = content_id(new)
    return now is not None and now == (recorded if recorded is not None else content_id(old))


def ensure_built(config, workdir: Path, log: EventLog | None = None) -> Path:
    """Builds the dataset once; a build made from a different data/context config is refused,
    one made from the same files at another ``dataset.path`` is used (``same_data``).

    ``log`` is the event log to build from (default: read the configured dataset); tests pass
    planted logs here. With several processes, process 0 builds (or checks) it while the others
    wait, then every process reads it: the build directory must be on a shared filesystem.
    """
    out = _build_dir(config, workdir)
    key = json.loads(json.dumps(build_key(config)))
    stamp = out / STAMP
    if jax.process_count() > 1 and not distributed.is_primary():
        distributed.barrier("dataset built")  # process 0 builds (or checks) it, the rest wait
        if not stamp.is_file():
            raise ConfigError(f"{out}: process 0 did not build the dataset here; with several "
                              "hosts config.dataset.build_dir must be on a shared filesystem")
    with _build_lock(out):
        if stamp.is_file():
            stored = read_json(stamp, "dataset stamp")
            recorded = stored.pop(DATA_CONTENT, None)
            old_path = str(stored.get("dataset", {}).get("path"))
            if {**stored, "dataset": {**stored.get("dataset", {}), "path": config.dataset.path}
                    } != key:
                raise ConfigError(f"{out} holds a dataset built from a different config.dataset/"
                                  "context/tasks; point config.dataset.build_dir elsewhere")
            if not same_data(old_path, config.dataset.path, recorded):
                raise ConfigError(f"{out} holds a dataset built from {old_path} "
                                  f"({recorded or 'content not recorded'}); config.dataset.path="
                                  f"{config.dataset.path} holds other files "
                                  f"({content_id(config.dataset.path) or 'none'}); point "
                                  "config.dataset.build_dir elsewhere")
            if stored != key:  # the same files at a new path: the stamp follows them
                write_json(stamp, {**key, DATA_CONTENT: recorded
                                   or content_id(config.dataset.path)})
        else:
            build(read_log(config) if log is None else log, ContextConfig.from_config(config), out)
            write_json(stamp, {**key, DATA_CONTENT: None if log is not None
                               else content_id(config.dataset.path)})
    if jax.process_count() > 1 and distributed.is_primary():
        distributed.barrier("dataset built")
    return out


@contextlib.contextmanager
def _build_lock(out: Path):
    """Holds an exclusive lock on ``out`` while its build is checked or made, so runs started
    together on one build directory (``onepiece experiment --jobs``) build it once."""
    out.mkdir(parents=True, exist_ok=True)
    with hold_lock(out / ".build.lock", wait=True):
        yield


# --------------------------------------------------------------------------- setup
@contextlib.contextmanager
def _training_lock(workdir: Path):
    """Process 0 holds ``WORKDIR/.train.lock`` while a run trains there, so a second ``onepiece
    train`` on the workdir (a double launch, a requeue while the first job still runs) fails at
    start instead of both writing checkpoints into one directory."""
    if not distributed.is_primary():
        yield
        return
    with hold_lock(workdir / ".train.lock", busy=lambda holder: WorkdirError(
            f"workdir {workdir} is being trained by {holder}; wait for it, or stop it (SIGTERM "
            "saves a checkpoint) and rerun to resume")):
        yield


@dataclasses.dataclass
class Job:
    """Everything a training or evaluation run needs, built once from the config."""

    config: ml_collections.ConfigDict
    workdir: Path
    data: BuiltDataset
    model: OnePiece
    objective: Objective
    mesh: Any
    catalog: dict
    tables: Any
    group_size: int | None
    rules: ShardingRules = ShardingRules()

    def example_batch(self, arrays: dict) -> dict:
        """One padded batch of the split's shapes (for init and restore templates only); built
        from the first rows, so ranking does not regroup a whole split for it."""
        size = int(self.config.train.batch_size)
        head = take_rows(arrays, np.arange(min(size, num_rows(arrays))))
        it = BatchIterator(head, size, shuffle=False, seed=0, group_size=self.group_size)
        return device_batch(next(it))

    def put(self, batch: dict) -> dict:
        """This process's rows of a batch → global arrays sharded over the data axis."""
        return put_batch(batch, self.mesh)

    def rows(self, batch_size: int) -> slice:
        """The rows of every global batch of ``batch_size`` this process feeds."""
        return process_rows(self.mesh, batch_size)

    @functools.cached_property
    def catalog_sharding(self):
        return catalog_shardings(self.catalog, self.mesh, self.rules)

    @functools.cached_property
    def item_shards(self) -> int:
        """Blocks of the evaluation item matrix: one per shard of the table axes."""
        return self.rules.table_shards(self.mesh)

    @functools.cached_property
    def item_sharding(self):
        """The evaluation item matrix's rows are split like the tables' (None: one device)."""
        if self.item_shards == 1:
            return None
        return jax.sharding.NamedSharding(self.mesh,
                                          jax.sharding.PartitionSpec(self.rules.table_axes))

    def state_shardings(self, optimizer, example_batch: dict):
        return state_shardings(self.model, optimizer, example_batch, self.catalog, self.mesh,
                               self.rules)

    def state_template(self, optimizer, example_batch: dict):
        """The train state as sharded ``ShapeDtypeStruct``s: a restore target that allocates
        nothing before Orbax reads each shard onto its device."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state(self.model, optimizer, example_batch, self.catalog),
                            self.state_shardings(optimizer, example_batch))

    # Scoring functions take the params as an argument and are built once per job, so every
    # validation after the first reuses the compiled program.
    @functools.cached_property
    def user_vectors_fn(self):
        model, step = self.model, self.objective.served_step
        return jax.jit(lambda p, b, catalog: model.apply({"params": p}, b, catalog, train=False)
                       ["user_vectors"][step])

    @functools.cached_property
    def item_vectors_fn(self):
        """``(params, catalog) -> f32[M, d]``, row i = item i's vector (M >= N+1 when sharded:
        ``eval.retrieval.catalogue_vectors`` computes each block on the devices holding it)."""
        model, n = self.model, int(self.data.spec["num_items"])
        chunk, shards, sharding = int(self.config.eval.item_chunk), self.item_shards, \
            self.item_sharding
        if sharding is None:
            return jax.jit(lambda p, catalog: model.apply(
                {"params": p}, jnp.arange(n + 1, dtype=jnp.int32), catalog,
                method="item_vectors"))

        def vectors(p, catalog):
            item_fn = functools.partial(model.apply, {"params": p}, catalog=catalog,
                                        method="item_vectors")
            return catalogue_vectors(item_fn, n, shards, chunk, sharding)

        return jax.jit(vectors, out_shardings=sharding)

    @property
    def eval_chunk(self) -> int:
        """Items scored per block and scan step (the block length divides by it)."""
        chunk = int(self.config.eval.item_chunk)
        if self.item_sharding is None:
            return chunk
        return catalogue_layout(int(self.data.spec["num_items"]), self.item_shards, chunk)[1]

    @functools.cached_property
    def scores_fn(self):
        model = self.model
        readouts = task_readouts(self.objective.assignment, len(self.config.tasks))
        return jax.jit(lambda p, b, catalog: task_scores(
            model.apply({"params": p}, b, catalog, train=False)["logits"], readouts))


def _as_catalog(catalog: dict, mesh, rules: ShardingRules, multiple: int) -> dict:
    """The catalog on the devices: rows padded to ``multiple`` and split like the tables."""
    padded = pad_catalog(catalog, multiple)
    return put_global(padded, catalog_shardings(padded, mesh, rules))


def make_job(config, workdir: str | Path) -> Job:
    workdir = Path(workdir)
    data = BuiltDataset.open(ensure_built(config, workdir))
    mesh = mesh_from_config(config)
    check_batch_size(int(config.train.batch_size), mesh)
    rules = ShardingRules.from_config(config)
    multiple = vocab_multiple(int(config.mesh.vocab_multiple), rules.table_shards(mesh))
    model_cfg = dataclasses.replace(model_config_from(config, data.spec), vocab_multiple=multiple)
    model = OnePiece(model_cfg)
    catalog = _as_catalog(data.catalog, mesh, rules, multiple)
    tables = negative_tables(data.item_count, data.catalog)
    tables = put_global(tables, jax.tree.map(lambda _: replicated(mesh), tables))
    group_size = int(config.context.num_candidates) if config.mode == "ranking" else None
    return Job(config, workdir, data, model, Objective.from_config(config), mesh, catalog,
               tables, group_size, rules)


def _train_split(job: Job):
    """The training split: in memory with one process; with several, read record by record, so
    each process decodes only its rows of every batch (ranking regroups candidates over the whole
    split every epoch, so it keeps the split in memory)."""
    if jax.process_count() > 1 and job.group_size is None:
        return job.data.records("train")
    return job.data.load_split("train")


def _check_writable(workdir: Path) -> None:
    """Fail at start, not after an hour of training, if the workdir (or its existing checkpoint
    directories) cannot be written: a file is created, written, synced and removed in each."""
    for directory in (workdir, workdir / "checkpoints", workdir / "best"):
        if directory != workdir and not directory.is_dir():
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write_probe.{jax.process_index()}"
            with probe.open("wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"workdir {workdir} is not writable ({type(e).__name__}: "
                               f"{e.strerror or e} at {directory}); use another --workdir") from e


def _check_space(workdir: Path, state, keep: int) -> None:
    """Fail at start if the disk cannot hold ``keep`` latest checkpoints, the best one and one
    being written (each about the size of the train state)."""
    size = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(state))
    need = (int(keep) + 2) * size
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise WorkdirError(f"workdir {workdir} has {free / 2**20:.1f} MiB free; checkpoints need "
                           f"about {need / 2**20:.1f} MiB ({keep} latest + best + one being "
                           f"written, {size / 2**20:.1f} MiB each); free space or use another "
                           "--workdir")


def _check_nonfinite_config(tcfg) -> None:
    if tcfg.nonfinite_policy not in ("stop", "skip"):
        raise ConfigError(f"config.train.nonfinite_policy={tcfg.nonfinite_policy!r}: expected "
                          "'stop' or 'skip'")
    if int(tcfg.max_nonfinite_in_a_row) < 1:
        raise ConfigError("config.train.max_nonfinite_in_a_row="
                          f"{tcfg.max_nonfinite_in_a_row}: must be >= 1")


# --------------------------------------------------------------------------- evaluation
def evaluate_split(job: Job, params, arrays: dict, split: str) -> dict:
    """Metrics of one split; every process feeds its rows of each batch and gets the same,
    exact, result (the per-batch outputs are gathered across processes before aggregation)."""
    cfg = job.config
    batch_size = int(cfg.eval.batch_size)
    check_batch_size(batch_size, job.mesh, "config.eval.batch_size")
    arrays, subset = eval_subset(arrays, int(cfg.eval.max_examples))
    common = dict(batch_size=batch_size, dataset=dataset_label(job.data.spec["dataset"], cfg),
                  split=split, put=job.put, rows=job.rows(batch_size))
    if cfg.mode == "retrieval":
        item_vecs = job.item_vectors_fn(params, job.catalog)
        result = evaluate_retrieval(
            functools.partial(job.user_vectors_fn, params, catalog=job.catalog), item_vecs,
            arrays, ks=tuple(cfg.eval.ks), exclude_history=bool(cfg.eval.exclude_history),
            chunk=job.eval_chunk, num_items=int(job.data.spec["num_items"]),
            shards=job.item_shards, item_sharding=job.item_sharding, **common)
    else:
        result = evaluate_ranking(functools.partial(job.scores_fn, params, catalog=job.catalog),
                                  arrays, group_size=job.group_size,
                                  task_names=tuple(cfg.tasks), **common)
    if subset:
        result["protocol"] += f" | {subset}"
    return result


def headline(result: dict, config) -> float:
    metric = config.train.early_stop_metric
    if metric not in result["metrics"]:
        raise ConfigError(f"config.train.early_stop_metric={metric!r} is not among the "
                          f"evaluation metrics {sorted(result['metrics'])}")
    return float(result["metrics"][metric])


# --------------------------------------------------------------------------- training
class _Preemption:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

    Re-entrant: ``train_and_evaluate`` holds it for the whole job (a signal during setup or the
    final evaluation is not fatal either) and the training loop enters it again; the handlers
    are installed by the outermost ``with`` (in the main thread only) and restored by it.
    """

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        self._depth = 0

    def __enter__(self):
        if self._depth == 0:
            self.requested = False
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._previous[sig] = signal.signal(sig, self._handle)
        self._depth += 1
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}


_PREEMPTION = _Preemption()


def _resume_identity(config) -> dict:
    """The fields a resumed run must share with the stored one, flattened to dotted keys.

    The data (the build key, wherever the build lives) defines the examples, the model and loss
    what the checkpoint's parameters mean, and the batch size what its iterator position counts.
    The rest of ``config.train`` (epochs, patience, logging) may change on resume, which is how a
    run is extended.
    """
    guarded = {**build_key(config), "model": config.model.to_dict(),
               "loss": config.loss.to_dict(),
               # the moving average is optimizer state: its decay may change, not its presence
               "train": {"batch_size": config.train.batch_size,
                         "ema_decay > 0": config.train.ema_decay > 0}}
    del guarded["dataset"]["build_dir"]
    return traverse_util.flatten_dict(guarded, sep=".")


def _recorded_content(config, workdir: Path) -> str | None:
    """The ``content_id`` recorded in the stamp of a stored run's build, if it is still there."""
    stamp = _build_dir(config, workdir) / STAMP
    return read_json(stamp, "dataset stamp").get(DATA_CONTENT) if stamp.is_file() else None


def _save_config(config, workdir: Path) -> None:
    path = workdir / "config.json"
    saved = config.copy_and_resolve_references()
    if "distributed" in saved:  # per process: `onepiece eval` takes it from the environment
        saved.distributed.process_id = -1
    text = saved.to_json_best_effort(indent=1)
    if path.is_file():
        # the stored run as this version reads it: a key added since holds its default
        stored = from_stored(read_json(path, "config"), str(path))
        before, now = _resume_identity(stored), _resume_identity(saved)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if "dataset.path" in changed and same_data(
                str(stored.dataset.path), str(saved.dataset.path), _recorded_content(stored,
                                                                                     workdir)):
            changed.remove("dataset.path")
        if changed:
            raise ConfigError(f"{workdir} holds a run with a different config ("
                              + ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
                                          for k in changed)
                              + "); use a new --workdir, or the stored values to resume (a "
                              "new dataset.path is accepted when it holds the same files)")
    distributed.barrier("config checked")  # every process compared before process 0 writes
    if distributed.is_primary():
        write_atomic(path, text)


def load_workdir_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json: not a training workdir")
    return from_stored(read_json(path, "config"), str(path))


def train_and_evaluate(config, workdir: str | Path, *, progress: bool = True,
                       preempt_at_step: int | None = None) -> dict:
    """Trains with periodic validation and early stopping, then evaluates the best checkpoint on
    test. Returns ``{"history": [...], "results": {...}}``.

    ``preempt_at_step`` behaves exactly like a SIGTERM arriving after that step (checkpoint, then
    return ``{"preempted": True}``); it lets tests and drills exercise resume deterministically.
    SIGTERM/SIGINT are caught for the whole call: during training the current step is saved
    (iterator position included) and ``{"preempted": True}`` returned, at most one step or one
    validation pass later; during setup nothing new is saved; during the final test evaluation
    the evaluation finishes.

    Faults: a non-finite loss or gradient is handled by ``config.train.nonfinite_policy`` (see
    ``_check_finite``); a workdir that cannot be written, lacks space for the checkpoints or is
    being trained in by another process is a ``WorkdirError`` before anything is compiled or
    trained; a corrupt latest checkpoint is reported and the previous one restored
    (``Checkpoints.restore``).
    Debug hook: ``config.train.debug_nan_at_step=S`` (1-based; 0 = off) multiplies the loss of
    steps ``S .. S + debug_nan_steps - 1`` by NaN inside the jitted step (``_debug_loss_scale``),
    so fault handling can be exercised end to end.
    """
    distributed.initialize(config.distributed)
    workdir = Path(workdir)
    with _PREEMPTION:
        _check_writable(workdir)
        with _training_lock(workdir):
            return _train_and_evaluate(config, workdir,
                                       progress=progress and distributed.is_primary(),
                                       preempt_at_step=preempt_at_step)


def _train_and_evaluate(config, workdir: str | Path, *, progress: bool,
                        preempt_at_step: int | None) -> dict:
    workdir = Path(workdir)
    _check_nonfinite_config(config.train)
    _save_config(config, workdir)
    job = make_job(config, workdir)
    tcfg = config.train
    train_arrays = _train_split(job)
    val_arrays = job.data.load_split("validation")
    it = BatchIterator(train_arrays, int(tcfg.batch_size), shuffle=True, seed=int(config.seed),
                       group_size=job.group_size, drop_remainder=True,
                       rows=job.rows(int(tcfg.batch_size)))
    steps_per_epoch = it.batches_per_epoch()
    if steps_per_epoch == 0:
        raise ConfigError(f"config.train.batch_size={tcfg.batch_size} exceeds the "
                          f"{num_rows(train_arrays)} training examples")
    total_steps = int(tcfg.epochs) * steps_per_epoch
    every = int(tcfg.eval_every_steps)
    if tcfg.max_steps:
        total_steps = min(total_steps, int(tcfg.max_steps))
    optimizer = make_optimizer(tcfg, total_steps)
    rng = jax.random.key(int(config.seed))
    init_rng, step_rng = jax.random.split(rng)
    example = job.example_batch(train_arrays)
    shardings = job.state_shardings(optimizer, example)
    state = init_state(job.model, optimizer, example, job.catalog, init_rng, shardings)
    _check_space(workdir, state, int(tcfg.keep_checkpoints))
    ckpts = Checkpoints(workdir, int(tcfg.keep_checkpoints))
    book = {"history": [], "best": None, "bad_epochs": 0, "iterator": it.get_state(),
            "seed": int(config.seed), "skipped_nonfinite": 0, "train_seconds": 0.0}
    if ckpts.steps("latest"):
        state, book, step = ckpts.restore(state)  # into the shardings of the template
        it.set_state(book["iterator"])
        print(f"resumed from step {step} (epoch {book['iterator']['epoch']}, batch "
              f"{book['iterator']['position']})", flush=True)
    elif distributed.is_primary():
        (workdir / "params.txt").write_text(param_summary(state.params))
    train_step = make_train_step(job.model, job.objective, optimizer, job.mesh, shardings,
                                 job.catalog_sharding)
    writer = SummaryWriter(str(workdir / "tb")) if distributed.is_primary() else None
    step = int(state.step)
    done = step >= total_steps or book["bad_epochs"] >= int(tcfg.early_stop_patience)
    bar = tqdm.tqdm(total=total_steps, initial=step, disable=not progress, unit="step",
                    dynamic_ncols=True, file=sys.stdout)
    last_val = book["history"][-1]["value"] if book["history"] else float("nan")
    window_start, window_examples = time.perf_counter(), 0
    checks = _FiniteChecks(tcfg, book)
    with _PREEMPTION as preempt:
        if preempt.requested and not done:  # arrived during setup: nothing new to save
            return _preempted(step, bar, writer, ckpts, book, saved=False)
        while not done:
            chunk_start, at_validation = time.perf_counter(), False
            for batch in it:
                batch = _debug_loss_scale(batch, step + 1, tcfg)
                state, metrics = train_step(state, job.put(device_batch(batch)), job.catalog,
                                            job.tables, step_rng)
                step += 1
                window_examples += int(batch["example_mask"].sum())
                checks.push(metrics, step)
                if step % int(tcfg.log_every_steps) == 0 or step == total_steps:
                    checks.flush()  # a logged step has been checked
                    rate = window_examples / max(time.perf_counter() - window_start, 1e-9)
                    _log(writer, bar, metrics, step, rate, last_val, config)
                    window_start, window_examples = time.perf_counter(), 0
                bar.update(1)
                at_validation = step >= total_steps or (
                    step % every == 0 if every else it.state.position >= steps_per_epoch)
                preempting = preempt.requested or step == preempt_at_step
                if preempting or at_validation:  # nothing unchecked is validated or saved
                    checks.flush()
                if preempting and not at_validation:
                    book["iterator"] = it.get_state()
                    book["train_seconds"] += time.perf_counter() - chunk_start
                    ckpts.save(step, state, book)
                    return _preempted(step, bar, writer, ckpts, book)
                if preempting or at_validation:  # a validation step: saved after it, below
                    break
            book["train_seconds"] += time.perf_counter() - chunk_start
            if it.state.position >= steps_per_epoch:
                it.next_epoch()
            book["iterator"] = it.get_state()
            if not at_validation:  # an epoch ended between two validations (eval_every_steps)
                continue
            result = evaluate_split(job, eval_params(state), val_arrays, "validation")
            value = headline(result, config)
            last_val = value
            epoch = _epochs(step, steps_per_epoch)
            book["history"].append({"epoch": epoch, "step": step,
                                    "train_seconds": round(book["train_seconds"], 2),
                                    "value": value, "metrics": result["metrics"]})
            improved = book["best"] is None or value > book["best"]
            book["best"] = value if improved else book["best"]
            book["bad_epochs"] = 0 if improved else book["bad_epochs"] + 1
            ckpts.save(step, state, book, best_value=value if improved else None)
            _log_validation(writer, result, step, epoch, config)
            if preempt.requested or step == preempt_at_step:  # this step is saved already
                return _preempted(step, bar, writer, ckpts, book)
            done = (step >= total_steps
                    or book["bad_epochs"] >= int(tcfg.early_stop_patience))
    bar.close()
    if distributed.is_primary():
        write_json(workdir / "history.json", book["history"])
    results = evaluate_workdir(workdir, split="test", checkpoint="best", job=job)
    if writer is not None:
        writer.close()
    ckpts.close()
    return {"history": book["history"], "results": results}


def _preempted(step: int, bar, writer, ckpts: Checkpoints, book: dict, saved: bool = True) -> dict:
    what = f"saved step {step}" if saved else f"nothing new to save (at step {step})"
    print(f"preempted ({_PREEMPTION.signal_name or 'preempt_at_step'}): {what}; rerun the same "
          "command to resume", flush=True)
    bar.close()
    if writer is not None:
        writer.close()
    ckpts.close()
    return {"history": book["history"], "preempted": True}


def _debug_loss_scale(batch: dict, step: int, tcfg) -> dict:
    """Debug hook (``config.train.debug_nan_at_step``; 0 = off): adds ``debug_loss_scale``,
    NaN for steps ``debug_nan_at_step .. + debug_nan_steps - 1`` and 1 otherwise, which the
    jitted step multiplies into the loss — a real non-finite loss and gradient, detected where a
    genuine one would be. One compiled program serves every injected step."""
    first = int(tcfg.debug_nan_at_step)
    if first <= 0:
        return batch
    bad = first <= step < first + int(tcfg.debug_nan_steps)
    scale = np.full(batch["example_mask"].shape, np.nan if bad else 1.0, np.float32)
    return {**batch, "debug_loss_scale": scale}


class _FiniteChecks:
    """Checks every step's ``metrics['finite']`` one step late: reading it waits for the device,
    so checking a step only after the next one is dispatched lets the host prepare that batch
    while the device still runs. ``flush`` checks the pending step at once; the loop calls it
    before a step's results are logged, validated or saved."""

    def __init__(self, tcfg, book: dict):
        self.tcfg, self.book = tcfg, book
        self.pending: tuple[dict, int] | None = None

    def push(self, metrics: dict, step: int) -> None:
        self.flush()
        self.pending = (metrics, step)

    def flush(self) -> None:
        if self.pending is not None:
            metrics, step = self.pending
            self.pending = None
            _check_finite(metrics, step, self.tcfg, self.book)


def _check_finite(metrics, step: int, tcfg, book: dict) -> None:
    """Applies ``config.train.nonfinite_policy`` after the step has already kept the old params
    and optimizer state on a non-finite loss or gradient: ``stop`` raises ``NonFiniteError``
    (nothing new is saved, the last good checkpoint stays the latest); ``skip`` counts the step
    (``skipped_nonfinite`` in the checkpoint's book) and goes on, raising once
    ``max_nonfinite_in_a_row`` consecutive steps were non-finite."""
    if float(metrics["finite"]) > 0:
        return
    bad = sorted(k for k, v in metrics.items() if k != "finite" and not np.isfinite(float(v)))
    what = ", ".join(bad) or "gradients"
    policy = f"config.train.nonfinite_policy={tcfg.nonfinite_policy!r}"
    if tcfg.nonfinite_policy == "skip":
        book["skipped_nonfinite"] += 1
        in_a_row = int(metrics["nonfinite_in_a_row"])
        limit = int(tcfg.max_nonfinite_in_a_row)
        if in_a_row < limit:
            tqdm.tqdm.write(f"warning: step {step}: non-finite {what}; update skipped ({in_a_row} "
                            f"in a row, {book['skipped_nonfinite']} in total)", file=sys.stdout)
            return
        raise NonFiniteError(f"step {step}: non-finite {what}; {in_a_row} non-finite steps in a "
                             f"row reached config.train.max_nonfinite_in_a_row={limit} ({policy}); "
                             "nothing new is saved, the last good checkpoint is kept")
    raise NonFiniteError(f"step {step}: non-finite {what} ({policy}); nothing new is saved, the "
                         "last good checkpoint is kept")


def _log(writer, bar, metrics, step: int, rate: float, last_val: float, config) -> None:
    scalars = {k: float(v) for k, v in metrics.items()}
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, step)
        writer.add_scalar("train/examples_per_s", rate, step)
    shown = {"loss": f"{scalars['loss']:.4f}", "ex/s": f"{rate:.0f}",
             f"val {config.train.early_stop_metric}": f"{last_val:.4f}"}
    if not distributed.is_primary():
        return
    if bar.disable:
        print(f"step {step} " + " ".join(f"{k} {v}" for k, v in shown.items()), flush=True)
    else:
        bar.set_postfix(shown)


def _epochs(step: int, steps_per_epoch: int) -> int | float:
    """Epochs trained after ``step``: an int at epoch ends, else a fraction (3 decimals)."""
    whole, rest = divmod(step, steps_per_epoch)
    return whole if rest == 0 else round(step / steps_per_epoch, 3)


def _log_validation(writer, result: dict, step: int, epoch: int | float, config) -> None:
    metrics = result["metrics"]
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"validation/{k}", float(v), step)
        writer.flush()
    shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                     if k.split("@")[0] in ("NDCG", "HR") or k.endswith("AUC"))
    if not distributed.is_primary():
        return
    tqdm.tqdm.write(f"epoch {epoch} step {step} | validation {shown} | {result['protocol']}",
                    file=sys.stdout)


def restore_state(job: Job, arrays: dict, checkpoint: str = "best") -> tuple:
    """``(state, step)``: a workdir's checkpoint restored straight into the job's shardings
    (``arrays``, a loaded split, fixes the example shapes of the template)."""
    template = job.state_template(make_optimizer(job.config.train, 1), job.example_batch(arrays))
    ckpts = Checkpoints(job.workdir, int(job.config.train.keep_checkpoints))
    try:
        state, _, step = ckpts.restore(template, checkpoint)
    finally:
        ckpts.close()
    return state, step


def evaluate_workdir(workdir: str | Path, *, split: str = "test", checkpoint: str = "best",
                     job: Job | None = None, write: bool = True,
                     exclude_history: bool | None = None) -> dict:
    """Evaluates a checkpoint of a workdir on a split; writes ``results.json`` (with protocol).

    ``exclude_history`` overrides the run's ``eval.exclude_history`` (False = RecBole's protocol
    for sequential models, True = HSTU's); each protocol's result is also kept as
    ``results/<split>-<history excluded|included>.json`` so both can be reported side by side.
    """
    workdir = Path(workdir)
    if job is None:
        config = load_workdir_config(workdir)
        distributed.initialize(config.distributed)
        job = make_job(config, workdir)
    if exclude_history is not None:
        job.config.eval.exclude_history = bool(exclude_history)
    arrays = job.data.load_split(split)
    state, step = restore_state(job, arrays, checkpoint)
    result = evaluate_split(job, eval_params(state), arrays, split)
    result["checkpoint"] = {"which": checkpoint, "step": step}
    if write and distributed.is_primary():
        kept = "excluded" if job.config.eval.exclude_history else "included"
        (workdir / "results").mkdir(exist_ok=True)
        write_json(workdir / "results" / f"{split}-history-{kept}.json", result)
        write_json(workdir / "results.json", result)
    if distributed.is_primary():
        print(json.dumps(result), flush=True)
    return result
