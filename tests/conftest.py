"""Shared fixtures: the offline copies of the public datasets and a small synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

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
