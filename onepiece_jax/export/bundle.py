"""``onepiece export``: a trained workdir → a self-describing serving bundle.

A bundle is a directory::

    manifest.json    config, feature vocabularies + hashes, model version, K, M, C, validation
                     metric and its protocol, inputs/outputs of every function, package
                     versions, size + SHA-256 of every other file
    user_tower.jax   retrieval: (weights, context batch) → r_K f32[b, d]    (jax.export)
    ranker.jax       ranking: (weights, context + C candidates) → probabilities f32[b, C, T]
    weights.npz      the parameters and the catalog's feature tables ("params/…", "catalog/…")
    items.npy        retrieval: item-tower vectors f32 (or bf16 bits) [N, d], row i = item_ids[i]
    item_ids.npy     retrieval: int32[N], the dense item id of each row (1..N)
    raw_ids.npz      the source's id of each dense item / user / query id (row 0: padding), from
                     the build, so a pipeline can map its ids in and the index's answers out
    serve.py         the runtime: loads, verifies and runs the bundle with numpy + jax only
    index.py         exact (jitted brute force) and HNSW top-k search over items.npy

The functions are ``jax.export`` artefacts with a symbolic batch dimension ``b``, lowered for
every platform asked for (one multi-platform artefact). They take the weights as explicit
arrays rather than baking them in as constants: the artefacts stay a few hundred KB whatever
the catalogue size, the weights are put on the device once, and ``weights.npz`` is hashed like
everything else. The served model always uses the KV cache (SPEC §3): the base context is
encoded once, then K steps run only their M new tokens against the cached keys and values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import logging
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from onepiece_jax.data.loader import BatchIterator, BuiltDataset, device_batch
from onepiece_jax.data.tfds_builder import RAW_IDS, dataset_label
from onepiece_jax.eval.ranking import task_readouts, task_scores
from onepiece_jax.eval.retrieval import protocol_string
from onepiece_jax.eval.runner import ranking_protocol_string
from onepiece_jax.export import serve
from onepiece_jax.files import write_json
from onepiece_jax.model.config import from_config as model_config_from
from onepiece_jax.model.onepiece import OnePiece
from onepiece_jax.train.checkpoint import CheckpointError, Checkpoints
from onepiece_jax.train.loop import ensure_built, load_workdir_config
from onepiece_jax.train.objective import Objective

SERVING_KEYS = ("user", "query", "context", "ih_item", "ih_behavior", "pa_item", "cis_item")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
ITEM_DTYPES = ("float32", "bfloat16")
RUNTIME_FILES = {"serve.py": serve.__file__, "index.py": str(Path(__file__).with_name("index.py"))}
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "orbax-checkpoint", "flatbuffers", "onepiece-jax")
ServingFn = Callable[[dict, dict], jax.Array]


class ExportError(ValueError):
    """A workdir that cannot be exported as asked; the message names the file, key or value."""


# --------------------------------------------------------------------------- the model
@dataclasses.dataclass
class Served:
    """A workdir's checkpoint ready to serve: config, data build, model, weights, functions."""

    workdir: Path
    config: ml_collections.ConfigDict
    data: BuiltDataset
    model: OnePiece
    weights: dict  # {"params": …, "catalog": …} of numpy arrays
    which: str
    step: int
    book: dict  # the checkpoint's training record (validation history, best value)
    functions: dict[str, ServingFn]
    example: dict[str, np.ndarray]  # two validation rows from the pipeline (shapes, keys)


def user_tower(model: OnePiece, step: int, weights: dict, batch: dict) -> jax.Array:
    """Retrieval serving: context batch → the served user vector r_step, f32[B, d]."""
    out = model.apply({"params": weights["params"]}, batch, weights["catalog"], train=False)
    vectors = out["user_vectors"][step]
    chex.assert_shape(vectors, (batch["ih_item"].shape[0], model.config.d_model))
    return vectors


def ranker(model: OnePiece, readouts: tuple[tuple[int, int], ...], weights: dict,
           batch: dict) -> jax.Array:
    """Ranking serving: context + one group of C candidates → per-task probabilities
    f32[B, C, T], task t read from the head of the step that learned it (as in evaluation)."""
    out = model.apply({"params": weights["params"]}, batch, weights["catalog"], train=False)
    probs = jax.nn.sigmoid(task_scores(out["logits"], readouts))
    chex.assert_shape(probs, (*batch["cis_item"].shape, len(readouts)))
    return probs


def serving_functions(model: OnePiece, config) -> dict[str, ServingFn]:
    objective = Objective.from_config(config)
    if config.mode == "ranking":
        readouts = task_readouts(objective.assignment, len(config.tasks))
        return {"ranker": functools.partial(ranker, model, readouts)}
    return {"user_tower": functools.partial(user_tower, model, objective.served_step)}


def pipeline_batches(data: BuiltDataset, config, split: str,
                     sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """One batch per size from the head of a split, as evaluation forms them (ranking requests
    in random candidate groups of C with evaluation's seed 0), padded rows included. Each batch
    is a prefix of the largest one, so one reference run covers them all."""
    source = data.records(split)
    if len(source) == 0:
        raise ExportError(f"{data.root}: split {split!r} has no examples")
    largest = max(sizes)
    head = source.take(np.arange(min(largest, len(source))))
    group = int(config.context.num_candidates) if config.mode == "ranking" else None
    batch = device_batch(next(BatchIterator(head, largest, shuffle=False, seed=0,
                                            group_size=group, regroup=group is not None)))
    return [{k: v[:size] for k, v in batch.items()} for size in sizes]


def _expected_params(model: OnePiece, batch: dict, catalog: dict) -> dict:
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch, catalog)
    return shapes["params"]


def match_params(params: Mapping, expected: Mapping, source: str) -> dict:
    """The checkpoint's parameters, checked leaf by leaf against the shapes the config implies.

    Embedding tables may carry extra zero rows (``config.mesh.vocab_multiple`` padding for
    sharding); they are never looked up and are dropped, so the bundle does not depend on the
    training mesh. Any other difference is an :class:`ExportError` listing the leaves.
    """
    have, want = serve.flatten(params), serve.flatten(expected)
    problems = [f"{p}: in the config's model, not in the checkpoint" for p in sorted(set(want) -
                                                                                    set(have))]
    problems += [f"{p}: in the checkpoint, not in the config's model" for p in sorted(set(have) -
                                                                                     set(want))]
    out = {}
    for path in sorted(set(have) & set(want)):
        value, shape = np.asarray(have[path]), tuple(want[path].shape)
        padded_table = (path.endswith("/embedding") and value.shape[1:] == shape[1:]
                        and value.shape[0] > shape[0])
        if value.shape == shape or padded_table:
            out[path] = value[:shape[0]] if padded_table else value
        else:
            problems.append(f"{path}: checkpoint {value.shape}, config {shape}")
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ExportError(f"{source} does not match the model its config.json describes: "
                          f"{'; '.join(problems[:6])}{more}. Was config.json edited after "
                          "training, or the checkpoint copied from another run?")
    return serve.unflatten(out)


@contextlib.contextmanager
def _quiet_absl():
    """Orbax logs a warning for every sub-item without its own metadata file; not news here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def restore_params(workdir: Path, which: str, keep: int) -> tuple[dict, int, dict]:
    """``(params, step, book)`` of checkpoint ``which`` (best | latest | STEP), parameters only
    (``Checkpoints.restore_params``), with absl's restore chatter silenced."""
    ckpts = Checkpoints(workdir, keep)
    try:
        with _quiet_absl():
            params, book, step = ckpts.restore_params(which)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    finally:
        ckpts.close()
    return params, step, book


def load_served(workdir: str | Path, checkpoint: str = "best",
                kv_cache: bool | None = True) -> Served:
    """A workdir's config, data build and checkpoint as a model ready to serve.

    ``kv_cache``: True serves with the KV cache (the bundle); None keeps the run's setting (the
    in-process reference of ``serve-check``).
    """
    workdir = Path(workdir)
    config = load_workdir_config(workdir)
    data = BuiltDataset.open(ensure_built(config, workdir))
    model_cfg = model_config_from(config, data.spec)
    model_cfg = dataclasses.replace(model_cfg, vocab_multiple=1,
                                    use_kv_cache=model_cfg.use_kv_cache if kv_cache is None
                                    else kv_cache)
    model = OnePiece(model_cfg)
    catalog = serve.unflatten(serve.flatten(data.catalog))  # drops entities without tables
    params, step, book = restore_params(workdir, checkpoint, int(config.train.keep_checkpoints))
    example = pipeline_batches(data, config, "validation", [2])[0]
    params = match_params(params, _expected_params(model, example, catalog),
                          f"checkpoint {checkpoint} (step {step}) of {workdir}")
    return Served(workdir, config, data, model, {"params": params, "catalog": catalog},
                  checkpoint, step, book, serving_functions(model, config), example)


# --------------------------------------------------------------------------- export
def input_specs(served: Served, batch: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """The manifest's inputs: each serving key of the pipeline batch with its shape (``b`` for
    the batch), int32, and the largest id the vocabulary has (per column for ``context``)."""
    spec = served.data.spec
    largest = {"user": spec["num_users"], "query": spec["num_queries"],
               "ih_item": spec["num_items"], "pa_item": spec["num_items"],
               "cis_item": spec["num_items"], "ih_behavior": len(spec.get("behaviors", [])),
               "context": [int(t["vocab_size"]) - 1 for t in (spec.get("context") or {}).values()
                           for _ in range(int(t["width"]))]}
    keys = [k for k in SERVING_KEYS if k in batch and (k != "cis_item" or
                                                      served.config.mode == "ranking")]
    return {k: {"shape": ["b", *batch[k].shape[1:]], "dtype": "int32", "max": largest[k]}
            for k in keys}


def export_function(fn: ServingFn, weights: dict, inputs: Mapping[str, dict],
                    platforms: Sequence[str]) -> jax.export.Exported:
    """``fn(weights, batch)`` as a ``jax.export`` artefact with a symbolic batch size ``b``."""
    (b,) = jax.export.symbolic_shape("b")
    batch = {k: jax.ShapeDtypeStruct((b, *spec["shape"][1:]), jnp.int32)
             for k, spec in inputs.items()}
    weight_specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), weights)
    return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(weight_specs, batch)


def item_vectors(served: Served, chunk: int = 65536) -> np.ndarray:
    """The item tower over the whole catalogue: f32[N, d], row i - 1 = item i (one compile:
    every chunk has the same shape)."""
    n = int(served.data.spec["num_items"])
    chunk = min(chunk, n)
    fn = jax.jit(lambda w, ids: served.model.apply({"params": w["params"]}, ids,
                                                   w["catalog"], method="item_vectors"))
    ids = np.arange(1, -(-n // chunk) * chunk + 1, dtype=np.int32)
    ids[n:] = 0  # padding ids past the catalogue; their rows are cut below
    blocks = [np.asarray(fn(served.weights, ids[lo:lo + chunk])) for lo in range(0, n, chunk)]
    vectors = np.concatenate(blocks)[:n]
    chex.assert_shape(vectors, (n, served.model.config.d_model))
    return vectors


def validation_record(served: Served) -> dict:
    """The checkpoint's validation metric, its value at that step and its protocol."""
    config, spec = served.config, served.data.spec
    entry = next((h for h in served.book.get("history", []) if h.get("step") == served.step),
                 None)
    if config.mode == "retrieval":
        protocol = protocol_string(dataset_label(spec["dataset"], config), "validation",
                                   bool(config.eval.exclude_history), tuple(config.eval.ks),
                                   num_items=int(spec["num_items"]))
    else:
        protocol = ranking_protocol_string(dataset_label(spec["dataset"], config), "validation",
                                           int(config.context.num_candidates))
    return {"metric": str(config.train.early_stop_metric),
            "value": None if entry is None else entry.get("value"),
            "epoch": None if entry is None else entry.get("epoch"),
            "best": served.book.get("best"), "protocol": protocol}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _check_request(out: Path, platforms: Sequence[str], items_dtype: str) -> None:
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ExportError(f"--platforms {','.join(platforms)}: expected a comma-separated subset "
                          f"of {','.join(PLATFORMS)}")
    if items_dtype not in ITEM_DTYPES:
        raise ExportError(f"--items-dtype {items_dtype}: expected one of {ITEM_DTYPES}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty directory; choose a new one")


def _write_items(out: Path, served: Served, items_dtype: str) -> dict:
    vectors = item_vectors(served)
    stored = vectors if items_dtype == "float32" else (
        np.asarray(jnp.asarray(vectors, jnp.bfloat16)).view(np.uint16))
    np.save(out / serve.ITEMS, stored)
    np.save(out / serve.ITEM_IDS, np.arange(1, vectors.shape[0] + 1, dtype=np.int32))
    return {"file": serve.ITEMS, "ids_file": serve.ITEM_IDS, "dtype": items_dtype,
            "stored_as": "float32" if items_dtype == "float32" else "uint16 (bfloat16 bits)",
            "count": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
            "score": "inner product with user_tower's output", "ids": "dense item ids of the "
            "build (row i of the catalogue tables); 0 is padding and has no row"}


def export_workdir(workdir: str | Path, out: str | Path, *, checkpoint: str = "best",
                   platforms: Sequence[str] = ("cpu",), items_dtype: str = "float32") -> dict:
    """Writes the bundle of a workdir's checkpoint to ``out`` (new or empty); returns the
    manifest. The manifest is written last: a bundle without one is incomplete."""
    out = Path(out)
    _check_request(out, platforms, items_dtype)
    served = load_served(workdir, checkpoint)
    inputs = input_specs(served, served.example)
    exported = {name: export_function(fn, served.weights, inputs, platforms)
                for name, fn in served.functions.items()}
    out.mkdir(parents=True, exist_ok=True)
    functions = {}
    for name, fn in exported.items():
        (out / f"{name}.jax").write_bytes(fn.serialize())
        shape = fn.out_avals[0].shape
        functions[name] = {
            "file": f"{name}.jax", "inputs": inputs, "platforms": list(fn.platforms),
            "output": {"shape": [str(d) for d in shape], "dtype": str(fn.out_avals[0].dtype),
                       "meaning": ("r_K, the served user vector" if name == "user_tower" else
                                   "per-task probabilities of each candidate (sigmoid)")},
            "calling_convention_version": fn.calling_convention_version,
            "call": "fn.call(weights, inputs): weights = unflatten(weights.npz)"}
    np.savez(out / serve.WEIGHTS, **serve.flatten(served.weights))
    items = _write_items(out, served, items_dtype) if served.config.mode == "retrieval" else None
    raw_ids = _copy_raw_ids(served.data.root, out)
    for name, source in RUNTIME_FILES.items():
        if name != "index.py" or items:  # index.py searches items.npy
            shutil.copyfile(source, out / name)
    manifest = _manifest(served, functions, items, raw_ids)
    manifest["files"] = {p.name: serve.file_record(p) for p in sorted(out.iterdir())}
    write_json(out / serve.MANIFEST, manifest)
    return manifest


def _copy_raw_ids(build_dir: Path, out: Path) -> dict | None:
    """Copies the build's raw-id maps into the bundle; None for a build made before builds kept
    them (serve.Bundle.encode/decode then say so)."""
    source = build_dir / RAW_IDS
    if not source.is_file():
        return None
    shutil.copyfile(source, out / serve.RAW_IDS)
    with np.load(out / serve.RAW_IDS) as npz:
        entities = {name: {"count": int(npz[name].shape[0]) - 1, "dtype": str(npz[name].dtype)}
                    for name in npz.files}
    return {"file": serve.RAW_IDS, "entities": entities, "layout": "row i = the source's id of "
            "dense id i; row 0 is padding"}


def _manifest(served: Served, functions: dict, items: dict | None,
              raw_ids: dict | None) -> dict:
    cfg, spec, layout = served.model.config, served.data.spec, served.model.config.layout()
    catalog = serve.flatten(served.weights["catalog"])
    readouts = (task_readouts(Objective.from_config(served.config).assignment, cfg.num_tasks)
                if cfg.mode == "ranking" else None)
    return {
        "format": serve.FORMAT, "format_version": serve.FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {
            "version": f"{served.workdir.name}@step{served.step}",
            "workdir": str(served.workdir.absolute()), "checkpoint": served.which,
            "step": served.step, "mode": cfg.mode, "reasoning_steps": cfg.reasoning_steps,
            "block_rows": layout.block_rows,
            "num_candidates": cfg.num_candidates if cfg.mode == "ranking" else None,
            "served_step": Objective.from_config(served.config).served_step,
            "task_readouts": readouts, "tasks": list(served.config.tasks),
            "d_model": cfg.d_model, "compute_dtype": cfg.compute_dtype,
            "kv_cache": cfg.use_kv_cache, "sequence_length": layout.length,
            "candidate_grouping": (
                "ranker ranks one group of C candidates per row; serve.Bundle.rank_requests "
                "puts any number of candidates per request into random groups of C (SPEC §4)"
                if cfg.mode == "ranking" else None)},
        "validation": validation_record(served),
        "functions": functions,
        "weights": {"file": serve.WEIGHTS, "layout": "flattened 'params/…' and 'catalog/…' "
                    "arrays; serve.unflatten gives the first argument of every function"},
        "items": items,
        "raw_ids": raw_ids,
        "features": spec,
        "vocabularies": serve.vocabulary_record(spec, catalog),
        "data": {"build_dir": str(served.data.root.absolute()), "dataset": spec["dataset"]},
        "config": json.loads((served.workdir / "config.json").read_text()),
        "versions": package_versions(),
    }
