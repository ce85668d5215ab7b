#!/usr/bin/env bash
# Do the heatmaps point at the evidence? A synthetic image folder (class = the quadrant of a bright
# square), EfficientNet-Lite0 (offline ImageNet weights) fine-tuned at 96 px with two seeds through
# src.train, then the pointing game per method x stage and the model-randomisation check:
# RESULTS.md. About 45 min on 2 loaded CPU cores (8 min training; Score-CAM and Ablation-CAM, one
# forward pass per channel, take most of the rest). Its own store under outputs/explain_pointing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OUT=outputs/explain_pointing
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlflow.db}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: two spin-wait on a shared 2-core box
[ -d "$OUT/quadrants" ] || $PY experiments/explain_pointing/make_data.py "$OUT/quadrants" 120 96
# No augmentation: a flip or a crop would move the square to another class's quadrant. One data
# split (dataset.seed=0) for both seeds: the seed comparison maps the same test images.
$PY -m src.train -m seed=0,1 dataset=imagefolder "dataset.source.root=$PWD/$OUT/quadrants" \
  dataset.seed=0 trainer.enable_progress_bar=false \
  backbone=efficientnet_lite0 'backbone.input_size=[3,96,96]' regularisation=none \
  strategy=finetune trainer.max_epochs=${EPOCHS:-6} dataset.batch_size=32 \
  experiment_name=explain_pointing "hydra.sweep.dir=$OUT/train"
$PY experiments/explain_pointing/pointing.py
