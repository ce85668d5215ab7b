"""The backbone-choice study's jobs, run resumably by experiments/study_jobs.py:
`plan.py --worker 0` and `--worker 1` (run.sh starts both), `plan.py --list` prints them.

Environment (all optional): TARGETS, BACKBONES, SEEDS (comma lists), EPOCHS (fine-tuning),
RESAMPLES (half-samples of the scored training images), EXTRA (overrides added to every
training job, e.g. trainer.limit_train_batches=2 for a smoke test), OUT (output folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_jobs import ROOT, StudyJob, main  # noqa: E402

OUT = Path(os.environ.get("OUT", ROOT / "outputs" / "backbone_choice"))
TARGETS = os.environ.get("TARGETS", "digits,textures,mnist,fashion_mnist,fashion_mnist_corrupted")
BACKBONES = os.environ.get(
    "BACKBONES", "mobilenetv2,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
)
SEEDS = os.environ.get("SEEDS", "0,1,2")
EPOCHS = os.environ.get("EPOCHS", "15")
RESAMPLES = os.environ.get("RESAMPLES", "10")
EXTRA = tuple(os.environ.get("EXTRA", "").split())
# Targets without an official test split: the test split is every image left after the 120 per
# class of the fine-tuning pool (digits ~540, textures 384 of 32-px patches, MNIST 3,750).
# Fashion-MNIST (plain and corrupted) and any other data set with a test split: all of it.
TEST_SPLIT = {
    "digits": ("dataset.test_fraction=0.3",),
    "textures": ("dataset.source.patch_size=32", "dataset.test_fraction=0.5"),
    "mnist": ("dataset.test_fraction=0.75",),
}
# The eight estimators of the tau table (linear-probe accuracy is the fixed-feature row itself).
ESTIMATORS = "[logme,leep,nce,hscore,knn_acc,nleep,parc,sfda]"


def jobs() -> list[StudyJob]:
    """Scores, then fixed features, then fine-tuning seed by seed (an interrupted study still has
    every cell at a lower seed count)."""
    pairs = [(t, b) for t in TARGETS.split(",") for b in BACKBONES.split(",")]
    base = lambda t, b: ("+experiment=backbone_choice", f"dataset={t}", f"backbone={b}")  # noqa: E731
    plan = [
        StudyJob(
            f"scores-{t}-{b}",
            (
                *base(t, b),
                *TEST_SPLIT.get(t, ()),
                "max_per_class=null",
                f"estimators={ESTIMATORS}",
                f"score_resamples={RESAMPLES}",
                "experiment_name=backbone_choice_scores",
            ),
            "similarity",
        )
        for t, b in pairs
    ]
    # Fixed features on the full training set (10 % of it to choose C), one seed: L-BFGS on the
    # same cached features is deterministic.
    plan += [
        StudyJob(
            f"fixed-{t}-{b}",
            (
                *base(t, b),
                *TEST_SPLIT.get(t, ()),
                "strategy=feature_extract",
                "dataset.samples_per_class=null",
                "dataset.val_fraction=0.1",
                "strategy.C=[0.01,0.1,1]",
                "seed=0",
                *EXTRA,
            ),
        )
        for t, b in pairs
    ]
    plan += [
        StudyJob(
            f"finetune-s{seed}-{t}-{b}",
            (
                *base(t, b),
                *TEST_SPLIT.get(t, ()),
                "strategy=finetune",
                f"seed={seed}",
                f"trainer.max_epochs={EPOCHS}",
                *EXTRA,
            ),
        )
        for seed in SEEDS.split(",")
        for t, b in pairs
    ]
    return [
        StudyJob(j.name, tuple(o.replace("+experiment", "experiment") for o in j.overrides))
        if j.config == "train"
        else j
        for j in plan
    ]


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{OUT}/mlflow.db")
    main(jobs(), OUT)
