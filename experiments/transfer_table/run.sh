#!/usr/bin/env bash
# 6 strategies x 3 fractions x 3 seeds x 2 data sets = 108 runs (about 55 minutes on 2 CPU cores),
# then RESULTS.md, the tables and plots. Runs go to their own store, outputs/transfer_table/mlflow.db
# (MLFLOW_TRACKING_URI overrides it). SEEDS=0 DATASETS=mnist bash run.sh: a smaller slice.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/outputs/transfer_table/mlflow.db}
mkdir -p outputs/transfer_table
SEEDS=${SEEDS:-0,1,2}
DATASETS=${DATASETS:-fashion_mnist,mnist}
# fraction:epochs. Fewer images get more epochs, so every run takes enough optimizer steps
# (1%: 30 steps, 10%: 75, 100%: 258); LP-FT probes for the first third of them.
for spec in 0.01:30 0.1:15 1.0:6; do
  fraction=${spec%:*} epochs=${spec#*:}
  common=(experiment=transfer_table "dataset=$DATASETS" "dataset.fraction=$fraction"
          "trainer.max_epochs=$epochs" "seed=$SEEDS")
  $PY -m src.train -m "${common[@]}" strategy=scratch,linear_probe,feature_extract,finetune,partial
  $PY -m src.train -m "${common[@]}" strategy=lp_ft "strategy.probe_epochs=$((epochs / 3))"
done
$PY experiments/transfer_table/results.py
