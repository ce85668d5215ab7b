#!/usr/bin/env bash
# The pool: 6 strategies x 3 fractions x 3 seeds x 2 data sets = 108 runs at 64 px; the full set:
# linear_probe and feature_extract on all 60,000 Fashion-MNIST training images x 3 seeds = 6 runs
# (experiment transfer_table_full). Then RESULTS.md, the tables and plots. Two streams, one per data
# set, run side by side with one thread each (1.24x the throughput of one stream on two threads);
# about 80 minutes on 2 CPU cores. Runs go to their own store, outputs/transfer_table/mlflow.db
# (MLFLOW_TRACKING_URI overrides it). A smaller slice: SEEDS=0 DATASETS=mnist FULL=0 bash run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OUT=outputs/transfer_table
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlflow.db}
export OMP_NUM_THREADS=1
mkdir -p $OUT/logs
SEEDS=${SEEDS:-0,1,2}
DATASETS=${DATASETS:-fashion_mnist mnist}
FULL=${FULL:-1}

grid() {  # name, overrides...: one Hydra multirun in its own sweep directory
  local name=$1; shift
  $PY -m src.train -m experiment=transfer_table "seed=$SEEDS" "hydra.sweep.dir=$OUT/multiruns/$name" "$@"
}

pool() {  # one data set's 54 runs
  local dataset=$1
  # fraction:epochs. Fewer images get more epochs, so every run takes enough optimizer steps
  # (1%: 30 steps, 10%: 75, 100%: 258); LP-FT probes for the first third of them.
  for spec in 0.01:30 0.1:15 1.0:6; do
    local fraction=${spec%:*} epochs=${spec#*:}
    local common=("dataset=$dataset" "dataset.fraction=$fraction" "trainer.max_epochs=$epochs")
    grid "$dataset-$fraction-train" "${common[@]}" strategy=scratch,feature_extract,finetune,partial
    # A frozen backbone's features, as in Kornblith et al. (2019): no pixel augmentation, so the
    # prefix cache computes them once.
    grid "$dataset-$fraction-probe" "${common[@]}" strategy=linear_probe regularisation.augmentation=none
    grid "$dataset-$fraction-lp_ft" "${common[@]}" strategy=lp_ft "strategy.probe_epochs=$((epochs / 3))"
  done
}

full() {  # all 60,000 training images (54,000 train + 6,000 val), where the caches make it affordable
  local common=(experiment_name=transfer_table_full dataset=fashion_mnist dataset.samples_per_class=null
                trainer.max_epochs=6)
  grid full-probe "${common[@]}" strategy=linear_probe regularisation.augmentation=none
  grid full-features "${common[@]}" strategy=feature_extract
}

start=$SECONDS
pids=()
last=$(echo $DATASETS | awk '{print $NF}')
for dataset in $DATASETS; do
  if [ "$dataset" = "$last" ] && [ "$FULL" = 1 ]; then
    (pool "$dataset"; full) > "$OUT/logs/$dataset.log" 2>&1 &
  else
    pool "$dataset" > "$OUT/logs/$dataset.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "Runs done in $(( (SECONDS - start) / 60 )) min (logs: $OUT/logs/)."
[ $status = 0 ] || { echo "A stream failed: see $OUT/logs/." >&2; exit 1; }
$PY experiments/transfer_table/results.py
