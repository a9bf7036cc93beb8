"""Shared fixtures: the offline copies of the public datasets and a small synthetic dataset."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

# Many tests train the same tiny configs again (resumed against uninterrupted runs, one CLI
# command after another), and each new job jits new closures that compile again. A persistent
# compilation cache, new for every pytest process and removed at its exit, serves the repeats:
# the two resume tests of tests/train/test_loop.py took 65 s with it, 153 s without. It must be
# configured before anything compiles, hence here at import.
_JAX_CACHE = tempfile.mkdtemp(prefix="onepiece-test-jax-cache-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic JDsearch-format dataset (300 users, 2,000 items), generated once."""
    from onepiece_jax.data.readers.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_users=300,
                              num_items=2000, seed=7)
