"""Launching test workers in fresh interpreters with a chosen number of simulated CPU devices.

The device count is fixed when JAX first initialises its backend, so a test that compares 1 device
with 8 has to run each side in its own process. This module imports nothing from JAX: workers call
:func:`force_host_devices` before their first ``import jax``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _xla_flags(devices: int | None) -> str:
    """The inherited XLA_FLAGS without any device count, plus ours (if given)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT_FLAG)]
    if devices is not None:
        flags.append(f"{_COUNT_FLAG}={devices}")
    return " ".join(flags)


def force_host_devices(devices: int) -> None:
    """In a worker, before JAX is imported: simulate ``devices`` CPU devices."""
    os.environ["XLA_FLAGS"] = _xla_flags(devices)
    os.environ["JAX_PLATFORMS"] = "cpu"


def launch(module: str, *args: object, devices: int | None = None) -> subprocess.Popen:
    """``python -m module args...`` from the repository root, output captured as text.

    ``devices=None`` leaves the device count to the worker (multi-process workers set their own).
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": _xla_flags(devices),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
