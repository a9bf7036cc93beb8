"""Fixed-shape numpy batches from a build directory, with an iterator whose position is saveable.

Every batch has the same shapes (the last partial batch is padded and ``example_mask`` marks the
real rows), so the jitted step compiles once. The iterator is a pure function of
``(seed, epoch, position)``: saving those three numbers and restoring them reproduces the exact
same batch stream, which is what exact resume needs.

Ranking requests are split into candidate groups of C here, with a fresh random grouping every
epoch (SPEC §4: random groups in training and at inference; evaluation uses a fixed seed).

Multi-host: every process computes the same global batch order (a function of the seed) and
yields only its ``rows`` of each global batch; over a :class:`RecordSplit` it also decodes only
those records (array_record random access), so each host reads its own share of the data and the
global batches are exactly those of a single-process run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from onepiece_jax.data.tfds_builder import TFDS_NAME, VARLEN_KEYS

HOST_ONLY_KEYS = ("time",)  # carried for analysis, never sent to the device


@dataclasses.dataclass
class BuiltDataset:
    """A build directory opened for reading."""

    root: Path
    spec: dict
    catalog: dict  # {"item": {name: int32[N+1, w]}, "user": {...}, "query": {...}}
    item_count: np.ndarray  # float32[N+1]: training interactions per item (popularity)

    @classmethod
    def open(cls, root: str | Path) -> BuiltDataset:
        root = Path(root)
        if not (root / "features.json").is_file():
            raise FileNotFoundError(f"{root} is not a build directory (no features.json); "
                                    "run `onepiece data build` first")
        spec = json.loads((root / "features.json").read_text())
        catalog: dict = {"item": {}, "user": {}, "query": {}}
        with np.load(root / "catalog.npz") as npz:
            for key in npz.files:
                entity, name = key.split("/", 1)
                if entity in catalog:
                    catalog[entity][name] = npz[key]
            item_count = npz["stats/item_count"]
        return cls(root, spec, catalog, item_count)

    def source(self, split: str):
        path = self.root / "tfds" / TFDS_NAME / "1.0.0"
        return tfds.builder_from_directory(str(path)).as_data_source(split=split)

    def load_split(self, split: str, exclude_max: int | None = None,
                   chunk: int = 8192) -> dict[str, np.ndarray]:
        """The whole split as stacked arrays (variable-length ``exclude`` right-padded with 0).

        Records are decoded ``chunk`` at a time straight into preallocated arrays, so the peak
        memory is the split's arrays plus one chunk of decoded records (not one Python dict of
        arrays per example for the whole split).
        """
        src = self.source(split)
        n = len(src)
        if n == 0:
            raise ValueError(f"{self.root}: split {split!r} has no examples")
        out: dict[str, np.ndarray] = {}
        varlen: dict[str, list[np.ndarray]] = {}
        keys: list[str] = []
        for lo in range(0, n, chunk):
            rows = src.__getitems__(list(range(lo, min(n, lo + chunk))))
            keys = keys or list(rows[0])
            for key in keys:
                values = [np.asarray(r[key]) for r in rows]
                if key == "exclude":
                    varlen.setdefault(key, []).extend(values)
                    continue
                block = np.stack(values)
                if key not in out:
                    out[key] = np.empty((n, *block.shape[1:]), block.dtype)
                out[key][lo:lo + block.shape[0]] = block
            del rows
        for key, values in varlen.items():
            width = max(1, max(v.shape[0] for v in values))
            if exclude_max is not None:
                width = min(width, exclude_max)
            arr = np.zeros((n, width), np.int32)
            for i, v in enumerate(values):
                arr[i, :min(v.shape[0], width)] = v[:width]
            out[key] = arr
        return {key: out[key] for key in keys}


@dataclasses.dataclass
class RecordSplit:
    """A split read on demand, record by record: ``take(idx)`` decodes only the rows asked for.

    Used for the training split with several processes (each reads only its rows of every
    batch). Variable-length fields (``exclude``, empty in training) are padded or cut to
    ``varlen_width``, the width ``BuiltDataset.load_split`` gives the training split.
    """

    source: Any
    varlen_width: int = 1

    def __len__(self) -> int:
        return len(self.source)

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        rows = self.source.__getitems__([int(i) for i in idx]) if len(idx) else []
        if not rows:  # an all-padding slice: shapes from the first record
            first = self.source.__getitems__([0])[0]
            return {k: v[:0] for k, v in self._stack([first]).items()}
        return self._stack(rows)

    def _stack(self, rows: list[dict]) -> dict[str, np.ndarray]:
        out = {}
        for key in rows[0]:
            if key in VARLEN_KEYS:
                arr = np.zeros((len(rows), self.varlen_width), np.int32)
                for i, r in enumerate(rows):
                    v = np.asarray(r[key])[:self.varlen_width]
                    arr[i, :v.shape[0]] = v
                out[key] = arr
            else:
                out[key] = np.stack([np.asarray(r[key]) for r in rows])
        return out


Arrays = dict[str, np.ndarray] | RecordSplit


def num_rows(arrays: Arrays) -> int:
    return len(arrays) if isinstance(arrays, RecordSplit) else next(iter(arrays.values())).shape[0]


def take_rows(arrays: Arrays, idx: np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(arrays, RecordSplit):
        return arrays.take(idx)
    return {k: v[idx] for k, v in arrays.items()}


def group_candidates(arrays: dict[str, np.ndarray], group_size: int,
                     rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Request examples [R, Nc] → group examples [G, C], valid candidates randomly regrouped.

    Padded candidates never fill a group on their own: a group exists only if it holds at least
    one real candidate. With ``rng=None`` the stored order is kept (deterministic evaluation).
    """
    cis, labels = arrays["cis_item"], arrays["cis_label"]
    r, nc = cis.shape
    noise = rng.random((r, nc)) if rng is not None else np.tile(np.arange(nc, dtype=float), (r, 1))
    order = np.argsort(np.where(cis > 0, noise, np.inf), axis=1, kind="stable")
    cis = np.take_along_axis(cis, order, axis=1).reshape(r, nc // group_size, group_size)
    labels = np.take_along_axis(labels, order[..., None], axis=1)
    labels = labels.reshape(r, nc // group_size, group_size, labels.shape[-1])
    req, grp = np.nonzero(cis[:, :, 0] > 0)
    out = {k: v[req] for k, v in arrays.items() if k not in ("cis_item", "cis_label")}
    out["cis_item"] = cis[req, grp]
    out["cis_label"] = labels[req, grp]
    return out


@dataclasses.dataclass
class IteratorState:
    epoch: int = 0
    position: int = 0  # batches already yielded in this epoch

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


class BatchIterator:
    """Shuffled (or ordered) fixed-size batches over in-memory arrays or a RecordSplit; resumable.

    ``group_size`` turns ranking requests into candidate groups, randomly regrouped every epoch
    when ``regroup`` (default: when ``shuffle``); evaluation keeps the order but still groups at
    random, with its fixed seed. ``rows`` (default: all) is the slice of every global batch this
    process feeds (``parallel.mesh.process_rows``): the order and the padding are those of the
    global batch, only the rows yielded differ.
    """

    def __init__(self, arrays: Arrays, batch_size: int, *, shuffle: bool,
                 seed: int, group_size: int | None = None, regroup: bool | None = None,
                 drop_remainder: bool = False, rows: slice | None = None):
        if group_size is not None and isinstance(arrays, RecordSplit):
            raise ValueError("ranking candidate groups need the split in memory (load_split)")
        self.arrays = arrays
        self.rows = slice(0, batch_size) if rows is None else rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_size = group_size
        self.regroup = shuffle if regroup is None else regroup
        self.drop_remainder = drop_remainder
        self.state = IteratorState()
        self._epoch_cache: tuple[int, dict, np.ndarray] | None = None

    def _epoch_view(self, epoch: int) -> tuple[dict, np.ndarray]:
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        rng = np.random.default_rng([self.seed, epoch])
        arrays = self.arrays
        if self.group_size is not None:
            arrays = group_candidates(arrays, self.group_size, rng if self.regroup else None)
        n = num_rows(arrays)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        self._epoch_cache = (epoch, arrays, order)
        return arrays, order

    def batches_per_epoch(self) -> int:
        arrays, order = self._epoch_view(self.state.epoch)
        n = order.size
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        arrays, order = self._epoch_view(self.state.epoch)
        if self.state.position >= self.batches_per_epoch():
            raise StopIteration
        start = self.state.position * self.batch_size
        idx = order[start:start + self.batch_size][self.rows]  # real rows come first
        self.state.position += 1
        size = len(range(*self.rows.indices(self.batch_size)))
        return pad_batch(take_rows(arrays, idx), size)

    def next_epoch(self) -> None:
        self.state = IteratorState(epoch=self.state.epoch + 1, position=0)

    def get_state(self) -> dict:
        return self.state.to_dict()

    def set_state(self, state: dict) -> None:
        self.state = IteratorState(epoch=int(state["epoch"]), position=int(state["position"]))


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pads to ``batch_size`` rows with zeros (padding ids) and adds ``example_mask``."""
    n = next(iter(batch.values())).shape[0]
    out = {}
    for k, v in batch.items():
        if n < batch_size:
            v = np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
        out[k] = v
    out["example_mask"] = np.arange(batch_size) < n
    return out


def device_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops host-only keys (int64 times) before a batch goes to the accelerator."""
    return {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}
