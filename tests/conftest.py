"""Shared fixtures: the offline copies of the public datasets, a small synthetic dataset, and
processes that hold a lock (another job on the same folder)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Most test time is XLA compilation of tiny models, and XLA's optimisation passes cost more than
# they save at these sizes: with them off, tests/model/test_model_reasoning.py took 58 s of CPU
# instead of 98 s, tests/train/test_loop.py 94 s instead of 132 s, and the whole `make test` (run
# one after the other on 2 cores) 539 s of wall time (15.9 min CPU) instead of 647 s (19.8). Set
# through the environment before jax is imported, so the CLI runs the tests start as subprocesses
# inherit it. Benchmarks and real runs keep XLA's optimisations.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], subprocess.Popen]]:
    """Starts a process that holds ``files.hold_lock(path)`` until killed (as another job
    would) and returns once it holds it; all are killed at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\n"
             "from onepiece_jax.files import hold_lock\n"
             "with hold_lock(sys.argv[1]):\n"
             "    print('held', flush=True); time.sleep(600)", str(path)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
