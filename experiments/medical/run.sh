#!/usr/bin/env bash
# MedMNIST transfer table: 4 strategies x 2 labelled fractions x 3 seeds on three single-label sets
# (72 runs) and on the multi-label ChestMNIST (24 runs), then the tables. Needs the 64 px .npz files
# in data/medmnist/ (see README.md); without them every job stops at once with the file it needs.
# Long on a CPU (ChestMNIST's 11k validation and 22k test images are scored in every run): use a GPU
# (trainer=gpu) where there is one.
set -euo pipefail
cd "$(dirname "$0")/../.."
STRATEGIES=scratch,linear_probe,lp_ft,finetune
.venv/bin/python -m src.train -m experiment=medical \
  dataset=pathmnist,dermamnist,pneumoniamnist strategy=$STRATEGIES \
  dataset.fraction=0.01,0.1 seed=0,1,2
.venv/bin/python -m src.train -m experiment=medical dataset=chestmnist \
  monitor.metric=val/auroc strategy=$STRATEGIES dataset.fraction=0.01,0.1 seed=0,1,2
# Single-label sets: balanced accuracy (DermaMNIST is 67% one class); ChestMNIST: macro AUROC.
.venv/bin/python -m src.report experiments=[medical] 'rows=[dataset,fraction]' columns=[strategy] \
  '+filters.dataset=[pathmnist,dermamnist,pneumoniamnist]' metric=test/balanced_acc \
  'column_order=[scratch,linear_probe,lp_ft,finetune]' plots.transferability=null \
  plots.imagenet_vs_transfer=null plots.learning_curves.metric=val/balanced_acc \
  'title="MedMNIST (64 px): test balanced accuracy (%)"' stem=medical_single_label
.venv/bin/python -m src.report experiments=[medical] rows=[fraction] columns=[strategy] \
  +filters.dataset=chestmnist metric=test/auroc 'column_order=[scratch,linear_probe,lp_ft,finetune]' \
  plots.transferability=null plots.imagenet_vs_transfer=null plots.learning_curves.metric=val/auroc \
  'title="ChestMNIST (64 px, 14 findings): test macro AUROC (%)"' stem=medical_chest
