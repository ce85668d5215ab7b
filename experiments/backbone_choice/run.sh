#!/usr/bin/env bash
# Which pretrained model? The four offline ImageNet backbones on 5 targets (full test splits):
# 8 transferability estimators on the 100 training images per class (with bootstrap resamples),
# logistic regression on fixed features of the full training set, full fine-tuning x 3 seeds;
# then RESULTS.md with 95 % intervals and verdicts. Resumable: run it again after an interruption
# and finished runs are reused (same config fingerprint), a killed one continues from its
# checkpoint. Expected wall time: README.md. Its own store, outputs/backbone_choice/mlflow.db
# (OUT or MLFLOW_TRACKING_URI override it). A slice: TARGETS=digits SEEDS=0 bash run.sh;
# other targets: TARGETS=cifar10,pets (any conf/dataset; see README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export OUT=${OUT:-$PWD/outputs/backbone_choice}
mkdir -p "$OUT/logs"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$OUT/mlflow.db}
# One thread per process, two workers: on 2 cores two threads in one process spin-wait on each
# other (measured 2-3x slower than one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORKERS=${WORKERS:-2}
start=$SECONDS
rm -rf "$OUT/claims"  # the workers share the job list through claim files (study_jobs.py)
pids=()
for ((w = 0; w < WORKERS; w++)); do
  $PY experiments/backbone_choice/plan.py --worker $w > "$OUT/logs/worker$w.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "Jobs done in $(( (SECONDS - start) / 60 )) min (logs: $OUT/logs/)."
[ $status = 0 ] || echo "Some jobs failed (see the logs' 'Failed:' lines); RESULTS.md shows what finished." >&2
$PY experiments/backbone_choice/results.py
exit $status
