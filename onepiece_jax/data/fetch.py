"""Fetch MovieLens-100K from the ``recbole`` wheel on PyPI.

GroupLens' own download is not reachable from every machine, but PyPI usually is, and the
RecBole wheel ships the dataset as atomic files under ``recbole/dataset_example/ml-100k/``; the
wheel is only a zip, so no torch or RecBole install is needed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE_VERSION = "1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


class FetchError(RuntimeError):
    """The download or the wheel failed; the message says which and how (CLI: one line)."""


def fetch_ml100k(out_dir: str | Path) -> Path:
    """Puts ``ml-100k.inter/.item/.user`` into ``out_dir`` (no-op when they are there)."""
    out = Path(out_dir)
    if all((out / name).is_file() for name in ML100K_FILES):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"recbole=={RECBOLE_VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise FetchError(f"could not download recbole=={RECBOLE_VERSION} with pip "
                               f"(exit {done.returncode}): {' | '.join(tail)}")
        return extract_ml100k(wheels[0], out)


def extract_ml100k(wheel: str | Path, out_dir: str | Path) -> Path:
    """Copies the ml-100k members of a RecBole wheel into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        members = {Path(n).name: n for n in zf.namelist()
                   if n.startswith(WHEEL_FOLDER) and not n.endswith("/")}
        missing = [name for name in ML100K_FILES if name not in members]
        if missing:
            raise FetchError(f"{wheel}: no {', '.join(missing)} under {WHEEL_FOLDER}")
        for name, member in members.items():
            (out / name).write_bytes(zf.read(member))
    return out
