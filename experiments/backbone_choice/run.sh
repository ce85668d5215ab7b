#!/usr/bin/env bash
# Which pretrained model? The four offline ImageNet backbones on 5 targets (full test splits):
# 8 transferability estimators on the 100 training images per class (with bootstrap resamples),
# logistic regression on fixed features of the full training set, full fine-tuning x 3 seeds;
# then RESULTS.md with 95 % intervals and verdicts. Resumable: run it again after an interruption
# and finished runs are reused (same config fingerprint), a killed one continues from its
# checkpoint. Expected wall time: README.md. Its own store, outputs/backbone_choice/mlflow.db
# (OUT or MLFLOW_TRACKING_URI override it). A slice: TARGETS=digits SEEDS=0 bash run.sh;
# other targets: TARGETS=cifar10,pets (any conf/dataset; see README.md).
exec bash "$(dirname "$0")/../run_study.sh" backbone_choice
