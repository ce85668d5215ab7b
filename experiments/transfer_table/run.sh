#!/usr/bin/env bash
# The transfer table: 6 strategies x 3 data sizes (1 %, 10 %, 100 % of a 300-per-class pool) x
# 3 seeds x 2 data sets on the full test splits (Fashion-MNIST 10,000, MNIST 2,000), then all
# 60,000 Fashion-MNIST training images: linear probe and fixed features x 3 seeds and one fully
# fine-tuned model. Then RESULTS.md with 95 % intervals and the LP-FT verdicts. Resumable: run it
# again after an interruption (finished runs reused by config fingerprint, a killed one continues
# from its checkpoint). Expected wall time: README.md. Store outputs/transfer_table/mlflow.db
# (OUT or MLFLOW_TRACKING_URI override it). A slice: SEEDS=0 DATASETS=mnist FULL=0 bash run.sh.
exec bash "$(dirname "$0")/../run_study.sh" transfer_table
