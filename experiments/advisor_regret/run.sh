#!/usr/bin/env bash
# The advisor's regret (issue #31): on digits, textures and Fashion-MNIST at 100 images per class,
# the exhaustive grid over the advisor's search space (4 backbones x 5 strategies x 3 values, seeds
# 1-2 at each best value), LogME scores, then `python -m src.advise` at 10, 20 and 50 % of each
# grid's measured compute x 3 advisor seeds; random search and the baselines replayed on the grid.
# Then RESULTS.md, regret.csv, regret_vs_compute.png. Resumable: run it again after an
# interruption. Expected wall time: README.md. Store outputs/advisor_regret/mlflow.db.
# A slice: TARGETS=textures BACKBONES=mobilenetv2,efficientnet_lite0 STRATEGIES=feature_extract,finetune
exec bash "$(dirname "$0")/../run_study.sh" advisor_regret
