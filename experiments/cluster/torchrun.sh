#!/usr/bin/env bash
# One DDP training over NNODES machines x NPROC_PER_NODE devices: run this same script on every
# machine, with NODE_RANK=0..NNODES-1 and MASTER_ADDR = the NODE_RANK=0 machine's address.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 experiments/cluster/torchrun.sh backbone=resnet50
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 experiments/cluster/torchrun.sh backbone=resnet50
# Needs: this repository and its .venv at the same path on every machine, MASTER_PORT open between
# them, MLFLOW_TRACKING_URI pointing at one `mlflow server` when NNODES > 1 (docs/cluster.md),
# and RUN_ID the same on every machine (all ranks write into outputs/torchrun/$RUN_ID).
# DRY_RUN=1 prints the command instead of running it (tests/test_recipes.py checks it).
set -euo pipefail
cd "$(dirname "$0")/../.."

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
NPROC_PER_NODE=${NPROC_PER_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_ID=${RUN_ID:-$(date +%Y-%m-%d_%H-%M)}
ACCELERATOR=${ACCELERATOR:-gpu}  # cpu: gloo instead of nccl
if (( NPROC_PER_NODE < 1 )); then
  echo "torchrun.sh: no GPU found; set NPROC_PER_NODE (and ACCELERATOR=cpu to run on CPUs)" >&2
  exit 2
fi

command=(
  .venv/bin/torchrun
  --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC_PER_NODE"
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT"
  -m src.train
  trainer=ddp trainer.accelerator="$ACCELERATOR"
  trainer.devices="$NPROC_PER_NODE" trainer.num_nodes="$NNODES"
  # Every rank composes the config itself: one run folder for all of them, not one per second.
  hydra.run.dir="outputs/torchrun/$RUN_ID"
  "$@"
)
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${command[@]}"
  echo
else
  exec "${command[@]}"
fi
