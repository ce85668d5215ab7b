#!/usr/bin/env bash
# The transfer table: 6 strategies x 3 data sizes (1 %, 10 %, 100 % of a 300-per-class pool) x
# 3 seeds x 2 data sets on the full test splits (Fashion-MNIST 10,000, MNIST 2,000), then all
# 60,000 Fashion-MNIST training images: linear probe and fixed features x 3 seeds and one fully
# fine-tuned model. Then RESULTS.md with 95 % intervals and the LP-FT verdicts. Resumable: run it
# again after an interruption (finished runs reused by config fingerprint, a killed one continues
# from its checkpoint). Expected wall time: README.md. Store outputs/transfer_table/mlflow.db
# (OUT or MLFLOW_TRACKING_URI override it). A slice: SEEDS=0 DATASETS=mnist FULL=0 bash run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export OUT=${OUT:-$PWD/outputs/transfer_table}
mkdir -p "$OUT/logs"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$OUT/mlflow.db}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per worker, one worker per core
WORKERS=${WORKERS:-2}
start=$SECONDS
rm -rf "$OUT/claims"  # the workers share the job list through claim files (study_jobs.py)
pids=()
for ((w = 0; w < WORKERS; w++)); do
  $PY experiments/transfer_table/plan.py --worker $w > "$OUT/logs/worker$w.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "Jobs done in $(( (SECONDS - start) / 60 )) min (logs: $OUT/logs/)."
[ $status = 0 ] || echo "Some jobs failed (see the logs' 'Failed:' lines); RESULTS.md shows what finished." >&2
$PY experiments/transfer_table/results.py
exit $status
