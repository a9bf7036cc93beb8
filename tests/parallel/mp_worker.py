"""One process of the multi-process test (``jax.distributed`` on localhost, gloo collectives).

``python -m tests.parallel.mp_worker BUILD RANKING_BUILD WORKDIR OUT PORT PROCESSES PROCESS_ID
DEVICES`` runs, with ``DEVICES`` simulated CPU devices in this process:

1. the real ``train_and_evaluate`` of the tiny planted retrieval job on a ``(PROCESSES, DEVICES)``
   mesh (data across processes, tables split over each process's devices): 3 steps, validation,
   a checkpoint written by all processes, then the best checkpoint restored across processes and
   evaluated on test;
2. a restore of the latest checkpoint, whose parameters are written to ``OUT/params-<id>.npz``;
3. ``evaluate_ranking`` of a fixed scoring function over the planted ranking split, each process
   feeding its rows, to check that AUC/GAUC are aggregated across processes exactly.

``OUT/result-<id>.json`` holds the run's return value and the ranking metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.parallel.subproc import force_host_devices


def main(build: str, ranking_build: str, workdir: str, out_dir: str, port: int, processes: int,
         process_id: int, devices: int) -> None:
    force_host_devices(devices)

    import jax

    jax.config.update("jax_disable_most_optimizations", True)

    from tests.parallel.mp_reference import ranking_metrics, restored_params, run_config
    from tests.train.conftest import tiny_config

    cfg = run_config(tiny_config(build), mesh=(processes, devices))
    cfg.distributed.update(enabled=True, coordinator_address=f"127.0.0.1:{port}",
                           num_processes=processes, process_id=process_id)
    from onepiece_jax.train.loop import train_and_evaluate

    run = train_and_evaluate(cfg, workdir, progress=False)

    import numpy as np

    out = Path(out_dir)
    np.savez(out / f"params-{process_id}.npz", **restored_params(cfg, workdir))
    result = {"run": run, "ranking": ranking_metrics(ranking_build),
              "process_count": jax.process_count(), "devices": jax.device_count(),
              "local_devices": jax.local_device_count()}
    (out / f"result-{process_id}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], a[3], int(a[4]), int(a[5]), int(a[6]), int(a[7]))
