#!/usr/bin/env bash
# plain / class_weights=auto / sampler=balanced x 3 seeds = 9 runs (a linear head on cached features;
# the test features are computed once), then the table: balanced accuracy on the balanced test split.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m src.train -m experiment=class_imbalance \
  dataset.class_weights=null,auto seed=0,1,2
.venv/bin/python -m src.train -m experiment=class_imbalance dataset.sampler=balanced seed=0,1,2
.venv/bin/python -m src.report experiments=[class_imbalance] \
  'rows=[params.dataset/class_weights]' 'columns=[params.dataset/sampler]' \
  metric=test/balanced_acc plots=null title="Long-tailed Fashion-MNIST: test balanced accuracy (%)"
