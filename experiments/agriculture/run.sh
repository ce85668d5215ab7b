#!/usr/bin/env bash
# Crop disease (PlantVillage) and aerial land use (EuroSAT) with few labels: 4 strategies x
# 3 samples_per_class x 3 seeds x 2 data sets = 72 runs, then the table. Needs the images in data/
# (see README.md); without them every job stops at once saying where they go.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m src.train -m experiment=agriculture dataset=eurosat,plantvillage \
  strategy=scratch,linear_probe,lp_ft,finetune dataset.samples_per_class=5,20,100 seed=0,1,2
.venv/bin/python -m src.report experiments=[agriculture] 'rows=[dataset,samples_per_class]' \
  columns=[strategy] metric=test/balanced_acc 'column_order=[scratch,linear_probe,lp_ft,finetune]' \
  plots.transferability=null plots.imagenet_vs_transfer=null \
  plots.data_efficiency.x=samples_per_class plots.learning_curves.metric=val/balanced_acc \
  'title="Crop disease and aerial imagery: test balanced accuracy (%)"' stem=agriculture
