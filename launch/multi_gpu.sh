#!/usr/bin/env bash
# One host, N GPUs, one process: JAX drives every visible GPU from a single controller.
# The (data, model) mesh takes all of them; MODEL_AXIS GPUs share each embedding table's rows.
#
#   launch/multi_gpu.sh CONFIG WORKDIR [MODEL_AXIS] [--config.KEY=VALUE ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/multi_gpu.sh configs/synthetic_search_retrieval.py \
#       runs/synth 2 --config.dataset.path=data/synthetic_search     # mesh (2, 2)
#
# config.train.batch_size must divide by the data axis (GPUs / MODEL_AXIS).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CONFIG WORKDIR [MODEL_AXIS] [--config.KEY=VALUE ...]" >&2; exit 2; }
CONFIG="$1"; WORKDIR="$2"; shift 2
MODEL_AXIS=1
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then MODEL_AXIS="$1"; shift; fi
# Let XLA use most of each GPU's memory up front (the default 75% leaves tables on the table).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec "$(dirname "$0")/local.sh" "$CONFIG" "$WORKDIR" "--config.mesh.shape=(-1,$MODEL_AXIS)" "$@"
