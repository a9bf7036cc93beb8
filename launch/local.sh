#!/usr/bin/env bash
# One process on this machine: CPU, or the one GPU JAX finds.
#
#   launch/local.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/local.sh configs/ml100k_onepiece.py runs/op --config.dataset.path=data/ml-100k
#
# JAX_PLATFORMS=cpu forces the CPU even where a GPU is visible.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG="$1"; WORKDIR="$2"; shift 2
exec "${ONEPIECE:-$ROOT/.venv/bin/onepiece}" train --config "$CONFIG" --workdir "$WORKDIR" "$@"
