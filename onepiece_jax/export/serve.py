"""The serving runtime of an exported OnePiece bundle. Needs only the standard library, numpy and
jax (with ``flatbuffers``): no Flax and no ``onepiece_jax`` import, so a serving stack can run a
bundle without the training code. ``onepiece export`` copies this file into every bundle as
``serve.py``; load it from there::

    import sys; sys.path.insert(0, BUNDLE)
    import serve
    bundle = serve.load_bundle(BUNDLE)          # every file checked against manifest.json
    bundle.check_vocabulary(BUILD_DIR)          # the ids your pipeline emits mean what they meant
    user_vecs = bundle.run("user_tower", batch)            # f32[B, d] = r_K  (retrieval)
    probs = bundle.run("ranker", batch)                    # f32[B, C, T]     (ranking, one group)
    probs = bundle.rank_requests(batch, candidates, seed)  # f32[R, Nc, T]  (any number of cands)
    ids, vectors = bundle.items()                          # the catalogue for an ANN index

or from a shell: ``python BUNDLE/serve.py BUNDLE --inputs IN.npz --out OUT.npz``.

A batch is the data pipeline's batch dict (``docs/architecture.md``): extra keys (labels, masks)
are ignored, every key the function takes must be there with the shape in ``manifest.json``
(``b`` is the batch size, any value). Each exported function takes ``(weights, inputs)``: the
weights (parameters and the catalog's feature tables) are explicit arrays from ``weights.npz``,
put on the device once at load, so the artefacts stay small and a new checkpoint is a new
``weights.npz``. A function is compiled once per batch size: pad requests to a few fixed sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

FORMAT = "onepiece-serving-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
ITEMS, ITEM_IDS = "items.npy", "item_ids.npy"
RAW_IDS = "raw_ids.npz"
VOCAB_ENTITIES = ("item", "user", "query", "context")
VOCAB_LISTS = ("behaviors", "pa_groups")
_INT32_MAX = np.iinfo(np.int32).max
_BACKEND_PLATFORMS = {"gpu": ("cuda", "rocm")}


class BundleError(ValueError):
    """A bundle (or a batch for it) that cannot be served; the message names the file or key."""


# --------------------------------------------------------------------------- hashes
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """``{"bytes", "sha256"}`` of one bundle file, as listed in the manifest's ``files``."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def vocabulary_record(spec: Mapping, catalog: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """What the ids mean: per feature table, its size, width and a SHA-256 over both plus the
    catalog's rows (entity id → feature values), and the behaviour and anchor-group lists.

    spec: a build's ``features.json``; catalog: ``{"item/category": int[N+1, w], ...}`` (a
    build's ``catalog.npz``). A rebuilt dataset that numbers users, items or feature values
    differently changes these hashes, which :meth:`Bundle.check_vocabulary` compares.
    """
    out: dict[str, dict] = {}
    for entity in VOCAB_ENTITIES:
        for name, table in (spec.get(entity) or {}).items():
            key = f"{entity}/{name}"
            size, width = int(table["vocab_size"]), int(table["width"])
            h = hashlib.sha256(json.dumps([key, size, width]).encode())
            rows = None
            if key in catalog:
                values = np.ascontiguousarray(catalog[key], dtype=np.int32)
                rows = int(values.shape[0])
                h.update(repr(values.shape).encode())
                h.update(values.tobytes())
            out[key] = {"vocab_size": size, "width": width, "rows": rows,
                        "sha256": h.hexdigest()}
    for key in VOCAB_LISTS:
        values = [str(v) for v in spec.get(key, [])]
        out[key] = {"values": values,
                    "sha256": hashlib.sha256(json.dumps(values).encode()).hexdigest()}
    return out


def read_build_vocabulary(build_dir: str | Path) -> dict[str, dict]:
    """:func:`vocabulary_record` of a dataset build directory (``features.json`` +
    ``catalog.npz``), read with numpy alone."""
    root = Path(build_dir)
    spec_path, catalog_path = root / "features.json", root / "catalog.npz"
    for path in (spec_path, catalog_path):
        if not path.is_file():
            raise BundleError(f"{path} is missing: {root} is not a dataset build directory")
    try:
        spec = json.loads(spec_path.read_text())
    except ValueError as e:
        raise BundleError(f"{spec_path} is not valid JSON ({e})") from None
    with np.load(catalog_path) as npz:
        catalog = {k: npz[k] for k in npz.files if k.split("/", 1)[0] in VOCAB_ENTITIES}
    return vocabulary_record(spec, catalog)


def vocabulary_mismatches(expected: Mapping[str, dict], actual: Mapping[str, dict]) -> list[str]:
    """One line per table or list whose hash differs between a bundle and a data build."""

    def describe(entry: dict | None) -> str:
        if entry is None:
            return "absent"
        if "values" in entry:
            return f"{entry['values']}"
        return f"vocab_size {entry['vocab_size']}, sha256 {entry['sha256'][:12]}"

    return [f"{key}: bundle {describe(expected.get(key))} vs data {describe(actual.get(key))}"
            for key in sorted(set(expected) | set(actual))
            if (expected.get(key) or {}).get("sha256") != (actual.get(key) or {}).get("sha256")]


# --------------------------------------------------------------------------- trees
def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a/b/c": leaf}`` (the ``weights.npz`` layout)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# --------------------------------------------------------------------------- batches
def check_batch(function: str, batch: Mapping[str, Any], inputs: Mapping[str, dict]) -> dict:
    """The function's inputs from a pipeline batch, as int32, checked against the manifest.

    inputs: ``{key: {"shape": ["b", ...], "dtype": "int32", "max": int | [int per column]}}``.
    Raises :class:`BundleError` naming the key on a missing key, a non-integer dtype, a wrong
    shape, mismatched batch sizes or an id outside the vocabulary (the model's table lookups
    would silently clamp it).
    """
    out, size = {}, None
    for key, spec in inputs.items():
        want = f"{spec['dtype']}[{', '.join(str(s) for s in spec['shape'])}]"
        if key not in batch:
            raise BundleError(f"{function}: the batch has no {key!r} ({want}); it takes the "
                              f"data pipeline's keys {sorted(inputs)}")
        arr = np.asarray(batch[key])
        if arr.dtype.kind not in "iu":
            raise BundleError(f"{function}: batch[{key!r}] has dtype {arr.dtype}; expected "
                              f"integer ids ({want})")
        if arr.ndim != len(spec["shape"]) or list(arr.shape[1:]) != list(spec["shape"][1:]):
            raise BundleError(f"{function}: batch[{key!r}] has shape {list(arr.shape)}; "
                              f"expected {want}")
        if size is None:
            size = arr.shape[0]
        elif arr.shape[0] != size:
            raise BundleError(f"{function}: batch[{key!r}] has {arr.shape[0]} rows, other keys "
                              f"have {size}")
        limit = np.broadcast_to(np.minimum(np.asarray(spec.get("max", _INT32_MAX), np.int64),
                                           _INT32_MAX), arr.shape)
        bad = (arr < 0) | (arr > limit)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise BundleError(f"{function}: batch[{key!r}] holds {int(arr[where])} at "
                              f"{list(where)}, outside the vocabulary 0..{int(limit[where])} "
                              f"({MANIFEST} inputs)")
        out[key] = arr.astype(np.int32)
    return out


def candidate_groups(candidates: np.ndarray, group_size: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random groups of C candidates per request (SPEC §4: random grouping at inference too).

    candidates: int[R, Nc], 0 = padding → ``request: int[G]`` (the request of each group) and
    ``slot: int[G, C]`` (the column of ``candidates`` in each place, -1 = padding). A request's
    valid candidates are shuffled and cut into ceil(n / C) groups; one without any gets none.
    """
    r, nc = candidates.shape
    width = -(-nc // group_size) * group_size
    valid = candidates > 0
    order = np.argsort(np.where(valid, rng.random((r, nc)), np.inf), axis=1, kind="stable")
    order = np.where(np.arange(nc)[None] < valid.sum(1, keepdims=True), order, -1)
    slots = np.pad(order, ((0, 0), (0, width - nc)), constant_values=-1)
    slots = slots.reshape(r, width // group_size, group_size)
    request, group = np.nonzero(slots[:, :, 0] >= 0)
    return request, slots[request, group]


# --------------------------------------------------------------------------- bundle
@dataclasses.dataclass
class Bundle:
    """A loaded bundle: its manifest, the deserialized functions and the weights on device."""

    root: Path
    manifest: dict
    functions: dict[str, jax_export.Exported]
    weights: dict

    def __post_init__(self):
        self._compiled = {name: jax.jit(fn.call) for name, fn in self.functions.items()}
        self._raw_ids: dict[str, np.ndarray] = {}  # entity: the raw id of each dense id
        # entity: (argsort of rows 1.., those rows sorted), made by the first encode
        self._sorted_ids: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def run(self, function: str, batch: Mapping[str, Any]) -> np.ndarray:
        """The exported function on one batch (the pipeline's dict; extra keys ignored)."""
        if function not in self.functions:
            raise BundleError(f"{self.root}: no function {function!r}; this {self.mode} bundle "
                              f"has {sorted(self.functions)}")
        inputs = check_batch(function, batch, self.manifest["functions"][function]["inputs"])
        return np.asarray(self._compiled[function](self.weights, inputs))

    @property
    def mode(self) -> str:
        return self.manifest["model"]["mode"]

    def rank_requests(self, batch: Mapping[str, Any], candidates: np.ndarray,
                      seed: int = 0) -> np.ndarray:
        """Per-task probabilities of any number of candidates per request: f32[R, Nc, T].

        batch: the requests' context keys (``cis_item`` is ignored); candidates: int[R, Nc]
        (0 = padding, whose rows come back NaN). The candidates are put in random groups of C
        (``seed``), each group is ranked with its request's context, and the scores are put back
        in the candidates' order.
        """
        group_size = int(self.manifest["model"]["num_candidates"])
        candidates = np.asarray(candidates)
        request, slot = candidate_groups(candidates, group_size, np.random.default_rng(seed))
        context = [k for k in self.manifest["functions"]["ranker"]["inputs"] if k != "cis_item"]
        rows = {k: np.asarray(batch[k])[request] for k in context if k in batch}
        rows["cis_item"] = np.where(slot >= 0, candidates[request[:, None], slot], 0)
        probs = self.run("ranker", rows)
        out = np.full((*candidates.shape, probs.shape[-1]), np.nan, np.float32)
        keep = slot >= 0
        out[np.broadcast_to(request[:, None], slot.shape)[keep], slot[keep]] = probs[keep]
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """The catalogue: ``ids: int32[N]`` (dense item ids) and ``vectors: f32|bf16[N, d]``."""
        info = self.manifest.get("items")
        if not info:
            raise BundleError(f"{self.root}: this {self.mode} bundle has no item vectors")
        vectors = np.load(self.root / info["file"])
        if info["dtype"] == "bfloat16":
            vectors = vectors.view(jnp.bfloat16)
        return np.load(self.root / info["ids_file"]), vectors

    def raw_ids(self, entity: str) -> np.ndarray:
        """``[N+1]``: the source's id of each dense ``entity`` id (``item``, ``user`` or
        ``query``; row 0 is padding), as the training data's reader assigned them."""
        info = self.manifest.get("raw_ids") or {}
        if entity not in info.get("entities", {}):
            why = ("it was exported from a dataset build made before builds kept them: build "
                   "the dataset again and export" if not info else
                   f"the reader kept {sorted(info['entities'])}")
            raise BundleError(f"{self.root}: no raw {entity} ids in this bundle; {why}")
        if entity not in self._raw_ids:
            with np.load(self.root / info["file"]) as npz:
                self._raw_ids[entity] = npz[entity]
        return self._raw_ids[entity]

    def decode(self, entity: str, ids: np.ndarray) -> np.ndarray:
        """Dense ids (the index's answers, a batch's histories) → the source's ids."""
        table, ids = self.raw_ids(entity), np.asarray(ids)
        bad = (ids < 0) | (ids >= table.shape[0])
        if bad.any():
            raise BundleError(f"dense {entity} id {ids[bad].flat[0].item()} outside "
                              f"0..{table.shape[0] - 1}")
        return table[ids]

    def encode(self, entity: str, raw: Any, *, unknown: str = "error") -> np.ndarray:
        """The source's ids → dense int32 ids for a batch. An id the training data did not
        have is refused by name (``unknown="error"``) or mapped to 0, padding (``"zero"``)."""
        if unknown not in ("error", "zero"):
            raise BundleError(f"unknown={unknown!r}: expected 'error' or 'zero'")
        if entity not in self._sorted_ids:
            ids = self.raw_ids(entity)[1:]
            order = np.argsort(ids, kind="stable")
            self._sorted_ids[entity] = order, ids[order]
        order, known = self._sorted_ids[entity]
        raw = np.asarray(raw)
        if {raw.dtype.kind, known.dtype.kind} - {"i", "u"} and raw.dtype.kind != known.dtype.kind:
            raise BundleError(f"raw {entity} ids here are {known.dtype}, got {raw.dtype}")
        pos = np.minimum(np.searchsorted(known, raw), known.size - 1)
        hit = known[pos] == raw
        if unknown == "error" and not hit.all():
            raise BundleError(f"{entity} id {raw[~hit].flat[0].item()!r} is not in the bundle's "
                              f"vocabulary of {known.size}; pass unknown='zero' to map such ids "
                              "to 0 (padding)")
        return np.where(hit, order[pos] + 1, 0).astype(np.int32)

    def check_vocabulary(self, build_dir: str | Path) -> None:
        """Refuses data whose vocabularies differ from the ones the bundle was exported with."""
        problems = vocabulary_mismatches(self.manifest["vocabularies"],
                                         read_build_vocabulary(build_dir))
        if problems:
            raise BundleError(f"vocabulary mismatch between bundle {self.root} and data "
                              f"{build_dir}: {'; '.join(problems)} (the ids the pipeline emits "
                              "would not mean what the model learned; export again from a "
                              "workdir trained on this build, or serve the build the bundle "
                              "was made from)")


def read_manifest(root: str | Path, verify: bool = True) -> dict:
    """The manifest of a bundle, with every listed file checked against its size and SHA-256."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not a serving bundle (make one with "
                          "`onepiece export`)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: 'format' is not {FORMAT!r}; not a serving bundle")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}; this "
                          f"runtime reads version {FORMAT_VERSION}")
    for key in ("files", "functions", "model", "vocabularies"):
        if key not in manifest:
            raise BundleError(f"{path} has no {key!r}; the bundle is corrupted")
    for name, record in manifest["files"].items() if verify else ():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{root}: {name} is missing (listed in {MANIFEST})")
        if file.stat().st_size != record["bytes"]:
            raise BundleError(f"{root}: {name} has {file.stat().st_size} bytes, {MANIFEST} "
                              f"says {record['bytes']} (truncated or replaced)")
        if sha256_file(file) != record["sha256"]:
            raise BundleError(f"{root}: {name} does not match its SHA-256 in {MANIFEST} "
                              "(corrupted or replaced)")
    return manifest


def _deserialize(root: Path, name: str, info: dict, versions: dict) -> jax_export.Exported:
    try:
        fn = jax_export.deserialize(bytearray((root / info["file"]).read_bytes()))
    except Exception as e:  # a flatbuffer from another jax, or garbage
        raise BundleError(f"{root / info['file']}: cannot deserialize {name} with jax "
                          f"{jax.__version__} (exported with jax {versions.get('jax')}): "
                          f"{type(e).__name__}: {e}") from None
    backend = jax.default_backend()
    runs_on = _BACKEND_PLATFORMS.get(backend, (backend,))
    if not set(runs_on) & set(fn.platforms):
        raise BundleError(f"{root / info['file']}: {name} was exported for {list(fn.platforms)}, "
                          f"this process runs on {backend!r}; export again with --platforms "
                          f"{','.join([*fn.platforms, runs_on[0]])}")
    return fn


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Reads, verifies (``verify``: sizes and SHA-256 of every file) and loads a bundle."""
    root = Path(root)
    manifest = read_manifest(root, verify)
    versions = manifest.get("versions", {})
    functions = {name: _deserialize(root, name, info, versions)
                 for name, info in manifest["functions"].items()}
    with np.load(root / WEIGHTS) as npz:
        weights = unflatten({k: npz[k] for k in npz.files})
    return Bundle(root, manifest, functions, jax.device_put(weights))


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """Runs every function of a bundle on every batch of an ``.npz`` (keys ``BATCH/KEY``) and
    writes ``BATCH/FUNCTION`` outputs; prints one JSON line about the process."""
    parser = argparse.ArgumentParser(description="run an exported OnePiece bundle")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        with np.load(args.inputs) as npz:
            batches = unflatten({k: npz[k] for k in npz.files})
        outputs = {f"{b}/{name}": bundle.run(name, batch)
                   for b, batch in batches.items() for name in bundle.functions}
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    np.savez(args.out, **outputs)
    print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
                      "functions": sorted(bundle.functions), "batches": len(batches),
                      "flax_loaded": "flax" in sys.modules,
                      "onepiece_jax_loaded": "onepiece_jax" in sys.modules}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
