"""Dataset readers: raw files → :class:`~onepiece_jax.data.events.EventLog`.

``read_dataset(name, path, **options)`` is the one entry point the CLI and the TFDS builder use,
so adding a dataset means adding a module and one line in ``READERS``. The synthetic generator
writes the JDsearch format, so its output is read with ``"jdsearch"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from onepiece_jax.data.events import EventLog
from onepiece_jax.data.readers.amazon import read_amazon
from onepiece_jax.data.readers.atomic import read_atomic
from onepiece_jax.data.readers.jdsearch import read_jdsearch
from onepiece_jax.data.readers.movielens import read_ml100k
from onepiece_jax.data.readers.taobao import read_taobao

READERS: dict[str, Callable[..., EventLog]] = {
    "ml100k": read_ml100k,
    "amazon": read_amazon,
    "taobao": read_taobao,
    "jdsearch": read_jdsearch,
    "atomic": read_atomic,
}


def read_dataset(name: str, path: str | Path, **options) -> EventLog:
    """Reads dataset ``name`` from ``path``; ``options`` go to that reader (e.g. caps)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(READERS))}")
    return READERS[name](path, **options)


__all__ = ["READERS", "read_dataset", "read_amazon", "read_atomic", "read_jdsearch",
           "read_ml100k", "read_taobao"]
