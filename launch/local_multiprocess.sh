#!/usr/bin/env bash
# N processes on this machine, each with D simulated CPU devices, joined by jax.distributed
# (coordinator on 127.0.0.1) with gloo CPU collectives: a multi-host run in miniature. Each
# process reads only its rows of every batch; process 0 writes the results (and builds the
# dataset if it is missing, while the others wait). Logs go to WORKDIR/process-I.log.
#
#   launch/local_multiprocess.sh N D CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/local_multiprocess.sh 2 2 configs/ml100k_onepiece.py runs/op_mp \
#       --config.dataset.path=data/ml-100k --config.mesh.shape='(2,2)'
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N="$1"; D="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
ONEPIECE="${ONEPIECE:-$ROOT/.venv/bin/onepiece}"
PORT="${PORT:-$("$ROOT/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
mkdir -p "$WORKDIR"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=$D" \
  ONEPIECE_DISTRIBUTED=1 \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
    "$ONEPIECE" train --config "$CONFIG" --workdir "$WORKDIR" --no-progress \
      --config.distributed.cpu_collectives=gloo "$@" > "$WORKDIR/process-$i.log" 2>&1 &
  pids+=("$!")
done

status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $WORKDIR/process-$i.log" >&2
    status=1
    cleanup
  fi
done
[[ $status -eq 0 ]] && tail -n 1 "$WORKDIR/process-0.log"
exit $status
