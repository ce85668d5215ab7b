#!/usr/bin/env bash
# Does similarity to the source predict the gain of transfer over scratch? (about 20 minutes on 2 CPU cores)
# Its own MLflow store (outputs/domain_similarity/mlflow.db), started afresh each time.
# 1. pretrain a source model on Fashion-MNIST; 2. score it against 8 targets (similarity runs);
# 3. fine-tune it and train from scratch on each target, 2 seeds; 4. RESULTS.md + plot.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OUT=outputs/domain_similarity
SEEDS=${SEEDS:-0,1}
WEIGHTS=$PWD/$OUT/source_fashion_mnist.pth
mkdir -p "$OUT" && rm -f "$OUT/mlflow.db"
export MLFLOW_TRACKING_URI=sqlite:///$PWD/$OUT/mlflow.db
TARGETS="dataset=fashion_mnist_corrupted dataset.source.severity=0,1,2,3,4"
OTHERS="dataset=mnist,digits,textures"

# 1. The source model: ResNet-10-T from scratch on 500 Fashion-MNIST images per class, 32 px.
rm -rf "$OUT/source"
$PY -m src.train experiment=domain_similarity experiment_name=domain_similarity_source \
  strategy=scratch dataset=fashion_mnist dataset.samples_per_class=500 trainer.max_epochs=3 \
  trainer.limit_test_batches=1.0 hydra.run.dir="$OUT/source"
$PY experiments/domain_similarity/export_source.py "$OUT/source" "$WEIGHTS"

# 2. Before training: transferability of the source model to each target, and domain similarity
#    of each target to the source data, in the source model's feature space.
SIM="backbone=resnet10t backbone.weights=$WEIGHTS backbone.input_size=[3,32,32] +source=fashion_mnist
  max_per_class=100 source.samples_per_class=100 source.num_workers=0 experiment_name=domain_similarity_scores"
$PY -m src.similarity -m $SIM $TARGETS
$PY -m src.similarity -m $SIM $OTHERS

# 3. Training: the source model fine-tuned, and the same architecture from scratch (the gain's baseline).
for DATA in "$TARGETS" "$OTHERS"; do
  $PY -m src.train -m experiment=domain_similarity backbone.weights="$WEIGHTS" \
    strategy=finetune,scratch $DATA seed=$SEEDS
done

# 4. The report.
$PY experiments/domain_similarity/report.py
