#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every TPU VM worker (gcloud --worker=all). On TPU VMs
# jax.distributed.initialize() finds the coordinator, the process count and the id by itself, so
# ONEPIECE_DISTRIBUTED=1 is all it needs. The repository (with .venv, built for TPU: pip install
# -e . "jax[tpu]") must be at the same path on every worker, and WORKDIR and
# config.dataset.build_dir on a filesystem they share (e.g. a Filestore/NFS mount).
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh CONFIG WORKDIR [MODEL_AXIS] \
#       [--config.KEY=VALUE ...]
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh configs/synthetic_search_retrieval.py \
#       /mnt/shared/runs/synth 4 --config.dataset.build_dir=/mnt/shared/builds/synth
set -euo pipefail
if [[ $# -lt 2 || -z "${TPU_NAME:-}" || -z "${ZONE:-}" ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [MODEL_AXIS] [--config.KEY=VALUE ...]" >&2
  exit 2
fi
CONFIG="$1"; WORKDIR="$2"; shift 2
MODEL_AXIS=1
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then MODEL_AXIS="$1"; shift; fi
REMOTE_ROOT="${REMOTE_ROOT:-\$HOME/onepiece-jax}"
ARGS="$(printf ' %q' "--config.mesh.shape=(-1,$MODEL_AXIS)" "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
  --worker=all --command "cd $REMOTE_ROOT && ONEPIECE_DISTRIBUTED=1 .venv/bin/onepiece train \
--config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR") --no-progress$ARGS"
