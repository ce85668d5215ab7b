#!/usr/bin/env bash
# The performance issue's GPU check: overhead, freeze, probe_cache and data at ResNet-50 scale
# (224 px, batch 256, bf16-mixed, channels_last, torch.compile, cudnn.benchmark) on real
# Fashion-MNIST images held in memory. Run from the repository root on a machine with one GPU:
#   bash experiments/bench_gpu/run.sh
# FASHION_MNIST_ROOT: folder of the four Fashion-MNIST .gz files (Debian's dataset-fashion-mnist).
# BENCH_JSON: where the rows go (default outputs/bench/gpu.json).
set -euo pipefail
export PYTHONUNBUFFERED=1
root=${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}
json=${BENCH_JSON:-outputs/bench/gpu.json}
python=${PYTHON:-python3}
nvidia-smi -L
$python -m src.bench gpu --rounds 1 --steps 30 --warmup 5 --data-epochs 5 \
    --job "dataset.source.root=$root" --json "$json"
