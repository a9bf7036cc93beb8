"""``onepiece serve-check``: a bundle, run where Flax and this package cannot be imported, against
the in-process model on examples from the data pipeline.

The bundle runs in a separate ``python -I`` process whose import system refuses ``flax``,
``onepiece_jax`` and the rest of the training stack (:data:`BLOCKED`), through the bundle's own
``serve.py``: if the runtime needed any of them, the check would fail. The in-process side
restores the same checkpoint from the workdir with the model as it was trained (KV cache or
not), so the comparison covers the export, the serialization and the runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from onepiece_jax.data.loader import BuiltDataset
from onepiece_jax.export import serve
from onepiece_jax.export.bundle import load_served, pipeline_batches

BLOCKED = ("flax", "onepiece_jax", "orbax", "optax", "chex", "ml_collections",
           "tensorflow_datasets", "tensorflow")
TOLERANCE = 1e-5
_BLOCKER = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: a serving bundle must run without it")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def isolated_python(code: str, *, blocked: Sequence[str] = BLOCKED,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``code`` in ``python -I`` (no PYTHONPATH, no current directory on the path) after
    installing an import hook that raises ImportError for the ``blocked`` top-level packages."""
    prelude = f"BLOCKED = {tuple(blocked)!r}\n{_BLOCKER}\n"
    return subprocess.run([sys.executable, "-I", "-c", prelude + code], capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_isolated(bundle: Path, batches: Sequence[dict[str, np.ndarray]]) -> tuple[dict, dict]:
    """Every function of the bundle on every batch, in an isolated process: ``(outputs, info)``
    with outputs ``{(batch index, function): array}`` and the runtime's own report."""
    with tempfile.TemporaryDirectory(prefix="serve-check-") as tmp:
        inputs, outputs = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        argv = ["serve.py", str(bundle), "--inputs", str(inputs), "--out", str(outputs)]
        proc = isolated_python(f"import runpy, sys\nsys.argv = {argv!r}\n"
                               f"runpy.run_path({str(bundle / 'serve.py')!r}, "
                               "run_name='__main__')\n")
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise serve.BundleError(f"{bundle}: the isolated runtime failed (exit "
                                    f"{proc.returncode}): {detail}")
        with np.load(outputs) as npz:
            out = {(int(k.split("/")[0]), k.split("/", 1)[1]): npz[k] for k in npz.files}
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def _inputs(batch: dict[str, np.ndarray], function: str, manifest: dict) -> dict:
    return {k: v.astype(np.int32) for k, v in batch.items()
            if k in manifest["functions"][function]["inputs"]}


def serve_check(bundle: str | Path, *, data: str | Path | None = None,
                workdir: str | Path | None = None, split: str = "test",
                batch_sizes: Sequence[int] = (1, 7, 128), tolerance: float = TOLERANCE) -> dict:
    """Compares the bundle (isolated runtime) with the in-process model; returns the report.

    ``data``: the build to draw examples from and to check the vocabularies against (default:
    the one the bundle was exported from); ``workdir``: where the checkpoint is (default: the
    manifest's). Every batch is a prefix of the largest, which the in-process model runs once;
    the bundle runs each batch size. Max abs differences are over the real rows of each batch.
    """
    bundle = Path(bundle)
    manifest = serve.read_manifest(bundle)
    build = Path(data or manifest["data"]["build_dir"])
    problems = serve.vocabulary_mismatches(manifest["vocabularies"],
                                           serve.read_build_vocabulary(build))
    if problems:
        raise serve.BundleError(f"vocabulary mismatch between bundle {bundle} and data {build}: "
                                f"{'; '.join(problems)}")
    model = manifest["model"]
    served = load_served(workdir or model["workdir"], str(model["step"]), kv_cache=None)
    batches = pipeline_batches(BuiltDataset.open(build), served.config, split, batch_sizes)
    keys = {k for info in manifest["functions"].values() for k in info["inputs"]}
    sent = [{k: v for k, v in b.items() if k in keys} for b in batches]
    outputs, runtime = run_isolated(bundle, sent)
    largest = int(np.argmax(batch_sizes))
    expected = {name: np.asarray(jax.jit(fn)(served.weights, _inputs(sent[largest], name,
                                                                     manifest)))
                for name, fn in served.functions.items()}
    rows = []
    for i, (size, batch) in enumerate(zip(batch_sizes, batches, strict=True)):
        real = batch["example_mask"]
        for name in served.functions:
            diff = np.abs(outputs[(i, name)][real] - expected[name][:size][real])
            rows.append({"function": name, "batch": int(size), "real_rows": int(real.sum()),
                         "max_abs": float(diff.max(initial=0.0))})
    worst = max(r["max_abs"] for r in rows)
    return {"bundle": str(bundle), "model": model["version"], "split": split, "rows": rows,
            "parity_max_abs": worst, "tolerance": tolerance, "ok": bool(worst <= tolerance),
            "runtime": runtime}
