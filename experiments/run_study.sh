#!/usr/bin/env bash
# Run one study's job plan (experiments/<study>/plan.py) with two workers, then its results.py:
#   bash experiments/run_study.sh <study>     (each study's run.sh calls this)
# Resumable: run it again after an interruption; finished jobs are reused by config fingerprint, a
# killed training run continues from its checkpoint. Its own store, outputs/<study>/mlflow.db (OUT
# or MLFLOW_TRACKING_URI override it); WORKERS (default 2) processes of one thread each.
set -euo pipefail
study=${1:?usage: bash experiments/run_study.sh <study folder under experiments/>}
cd "$(dirname "$0")/.."
[ -f "experiments/$study/plan.py" ] || { echo "No experiments/$study/plan.py" >&2; exit 2; }
PY=${PY:-.venv/bin/python}
export OUT=${OUT:-$PWD/outputs/$study}
mkdir -p "$OUT/logs"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$OUT/mlflow.db}
# One thread per process, one process per core: on 2 cores two threads in one process spin-wait
# on each other (measured 2-3x slower than one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORKERS=${WORKERS:-2}
start=$SECONDS
# The workers share the job list through claim files; a failed job's marker stops the jobs that
# start from it waiting (study_jobs.py). A rerun starts both afresh.
rm -rf "$OUT/claims" "$OUT/failed"
echo "$(date -u '+%F %T') start, load average $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/logs/load.txt"
pids=()
for ((w = 0; w < WORKERS; w++)); do
  # Appended: a resumed study keeps the logs of its earlier sittings (their job times).
  echo "=== $(date -u '+%F %T') start" >> "$OUT/logs/worker$w.log"
  $PY "experiments/$study/plan.py" --worker $w >> "$OUT/logs/worker$w.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "$(date -u '+%F %T') end, load average $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/logs/load.txt"
echo "Jobs done in $(( (SECONDS - start) / 60 )) min (logs: $OUT/logs/)."
[ $status = 0 ] || echo "Some jobs failed (see the logs' 'Failed:' lines); RESULTS.md shows what finished." >&2
$PY "experiments/$study/results.py"
exit $status
