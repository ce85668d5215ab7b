#!/usr/bin/env bash
# Beyond plain fine-tuning (issue #30): on Fashion-MNIST at 100 and 1,000 training images per class
# x 3 seeds, fine-tuning at three learning rates, LP-FT, EMA, LoRA and BitFit; then WiSE-FT, the
# greedy soup of the learning-rate sweep and temperature scaling of the plain fine-tuned run (src.posthoc);
# TTA and the corrupted test split (src.eval). Then RESULTS.md with 95 % intervals and verdicts.
# Resumable: run it again after an interruption. Expected wall time: README.md. Store
# outputs/beyond_finetune/mlflow.db (OUT or MLFLOW_TRACKING_URI override it).
# A slice: SEEDS=0 SIZES="100:15:32" bash experiments/beyond_finetune/run.sh
exec bash "$(dirname "$0")/../run_study.sh" beyond_finetune
