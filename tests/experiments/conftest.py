"""Fixtures of the experiment tests: the planted build of the training tests, reused."""

from tests.train.conftest import planted_build  # noqa: F401  (a fixture, registered by import)
