"""Writes context-engineered examples as a TFDS dataset (array_record), without TensorFlow.

Layout of a build directory::

    OUT/features.json        the FeatureSpec the model builds its tables from
    OUT/catalog.npz          side-feature tables per entity + training item counts
    OUT/raw_ids.npz          the source's id of each dense item / user / query id (row 0:
                             padding), where the reader keeps them; exported with a bundle
    OUT/build_summary.json   examples per split, skipped records, the log's stats, timings
    OUT/tfds/onepiece_examples/1.0.0/...   array_record shards (train / validation / test)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from onepiece_jax.config import load_config
from onepiece_jax.data.context import SPLITS, ContextBuilder, ContextConfig, catalog_arrays
from onepiece_jax.data.events import EventLog

TFDS_NAME = "onepiece_examples"
RAW_IDS = "raw_ids.npz"
VARLEN_KEYS = ("exclude",)  # variable-length in the records, padded with 0 when batched


def read_log(config) -> EventLog:
    """Reads the configured dataset and, for ranking on logs without impressions, makes requests."""
    from onepiece_jax.data.context import sessions_to_requests
    from onepiece_jax.data.readers import read_dataset

    ds = config.dataset
    if not ds.path:
        raise ValueError("config.dataset.path is empty: pass --config.dataset.path=DATA_PATH")
    options = {}
    if ds.time_precision != "exact":
        if ds.name != "ml100k":
            raise ValueError(f"config.dataset.time_precision={ds.time_precision!r} applies to "
                             f"ml100k (RecBole's normalised float timestamps), not {ds.name!r}")
        options["time_precision"] = ds.time_precision
    if ds.name == "atomic":
        from onepiece_jax.data.readers.atomic import options_of

        options.update(options_of(ds))
    log = read_dataset(ds.name, ds.path, **options)
    if config.mode == "ranking" and log.requests is None:
        log.requests = sessions_to_requests(log, session_seconds=ds.session_seconds,
                                            negatives=ds.session_negatives, seed=config.seed)
    return log


def dataset_label(name: str, config) -> str:
    """A built dataset's ``name`` as protocol strings print it: RecBole's event order makes
    (slightly) other splits than exact time order, so it is named."""
    if config.dataset.time_precision == "recbole":
        return f"{name} (RecBole's event order)"
    return name


def _feature_dict(example: dict) -> tfds.features.FeaturesDict:
    feats = {}
    for key, value in example.items():
        arr = np.asarray(value)
        shape = (None,) if key in VARLEN_KEYS else arr.shape
        feats[key] = tfds.features.Tensor(shape=shape, dtype=arr.dtype)
    return tfds.features.FeaturesDict(feats)


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """A build's metadata lives only in its directory. TFDS looks up a new dataset's metadata on
    GCS when its builder is made and leaves an empty ``/tmp/tmp*tfds`` folder behind on every
    look-up, even with GCS disabled; these datasets are never on GCS, so skip the look-up."""

    def initialize_from_bucket(self) -> None:
        return None


def _make_builder_class(builder: ContextBuilder, sample: dict):
    class OnepieceExamples(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Context-engineered OnePiece examples (one per prediction)."""

        VERSION = tfds.core.Version("1.0.0")
        name = TFDS_NAME

        def _info(self):
            return _LocalDatasetInfo(builder=self, features=_feature_dict(sample),
                                     description="OnePiece context-engineered examples")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in SPLITS}

        def _generate_examples(self, split) -> Iterator[tuple[str, dict]]:
            yield from builder.examples(split)

    return OnepieceExamples


def _first_example(builder: ContextBuilder) -> dict:
    for split in SPLITS:
        for _, ex in builder.examples(split):
            return ex
    raise ValueError(f"dataset {builder.log.dataset}: no examples in any split")


def build(log: EventLog, ctx: ContextConfig, out_dir: str | Path) -> dict:
    """Builds every split into ``out_dir``; returns the build summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    builder = ContextBuilder(log, ctx)
    (out / "features.json").write_text(json.dumps(builder.spec, indent=1))
    counts = np.bincount(builder.item[builder.train_mask], minlength=log.num_items + 1)
    arrays = catalog_arrays(log)
    arrays["stats/item_count"] = counts.astype(np.float32)
    np.savez(out / "catalog.npz", **arrays)
    if log.raw_ids():
        np.savez(out / RAW_IDS, **log.raw_ids())
    cls = _make_builder_class(builder, _first_example(builder))
    tfds_builder = cls(data_dir=str(out / "tfds"), file_format="array_record")
    scratch = out / "tfds_scratch"  # TFDS wants a download dir; keep it inside the build
    tfds_builder.download_and_prepare(download_dir=str(scratch))
    shutil.rmtree(scratch, ignore_errors=True)
    info = tfds_builder.info
    summary = {
        "dataset": log.dataset,
        "mode": ctx.mode,
        "examples": {s: int(info.splits[s].num_examples) for s in SPLITS},
        "skipped": {**log.skipped, **builder.skipped},
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (out / "build_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def build_from_config(config_path: str, overrides: Sequence[str], out_dir: str) -> dict:
    config = load_config(config_path, overrides)
    return build(read_log(config), ContextConfig.from_config(config), out_dir)
