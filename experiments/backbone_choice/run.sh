#!/usr/bin/env bash
# Which pretrained model? The four offline ImageNet backbones on 5 targets: transferability scores
# before training (You et al. 2021), logistic regression on fixed features with C chosen on
# validation and fine-tuning over 3 seeds (Kornblith et al. 2019), then RESULTS.md.
# About 1 h on 2 loaded CPU cores (caps: README.md and conf/experiment/backbone_choice.yaml).
# Its own store, outputs/backbone_choice/mlflow.db (MLFLOW_TRACKING_URI overrides it).
# FIRST_SEEDS=0 LAST_SEEDS=1 TARGETS=digits bash run.sh: a smaller slice.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OUT=outputs/backbone_choice
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlflow.db}
# One thread per process: on a shared 2-core machine two threads spin-wait on each other
# (measured 2-3x slower than one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Fine-tuning seeds: this shell runs FIRST_SEEDS; chain1 runs LAST_SEEDS after the scores and fixed features.
FIRST_SEEDS=${FIRST_SEEDS:-0,1}
LAST_SEEDS=${LAST_SEEDS:-2}
TARGETS=${TARGETS:-digits,textures,mnist,fashion_mnist,fashion_mnist_corrupted}
BACKBONES=${BACKBONES:-mobilenetv2,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2}
# One process per stage (start-up costs minutes on a loaded machine); the experiment config fixes
# the images (the same for every backbone and seed) and each backbone's resolution.
SWEEP=("backbone=$BACKBONES" "dataset=$TARGETS")

FINETUNE=(experiment=backbone_choice "${SWEEP[@]}" strategy=partial strategy.freeze_stages=-2)

# Two chains side by side (one thread each, 2 cores).
chain1() {
  # 1. Before training: LogME, LEEP, NCE, H-score, kNN on the training images.
  $PY -m src.similarity -m +experiment=backbone_choice "${SWEEP[@]}" max_per_class=null \
    experiment_name=backbone_choice_scores "hydra.sweep.dir=$OUT/scores"
  # 2. Fixed features: logistic regression, C chosen on the validation images. L-BFGS on the same
  #    cached features of the same images is deterministic: one seed is the whole distribution.
  $PY -m src.train -m experiment=backbone_choice "${SWEEP[@]}" strategy=feature_extract \
    'strategy.C=[0.001,0.01,0.1,1,10]' seed=0 "hydra.sweep.dir=$OUT/fixed"
  # 3b. Fine-tuning, the last seed(s).
  $PY -m src.train -m "seed=$LAST_SEEDS" "${FINETUNE[@]}" "hydra.sweep.dir=$OUT/finetune_s2"
}
chain1 > "$OUT/chain1.log" 2>&1 &
first=$!
# 3a. Fine-tuning (the last two stages + head: a CPU cap), seeds outermost so that an interrupted
#     study still has every cell at a lower seed count.
$PY -m src.train -m "seed=$FIRST_SEEDS" "${FINETUNE[@]}" "hydra.sweep.dir=$OUT/finetune"
wait "$first"
# 4. The report.
$PY experiments/backbone_choice/results.py
