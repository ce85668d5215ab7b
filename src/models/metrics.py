"""Every metric comes from torchmetrics; names are defined here once (val/acc, test/f1_macro, ...)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

# torchmetrics' argument validation reads label values back from the device (torch.unique) on
# every update: a GPU sync per step. Labels come from our data module, already in range.
FAST = {"validate_args": False}


def scalar_metrics(num_classes: int, prefix: str, calibration: bool = True) -> MetricCollection:
    """Metrics logged as one number per epoch. balanced_acc (mean per-class recall) and the
    one-vs-rest macro AUROC do not reward predicting the majority class of an imbalanced set.
    calibration=False: scores that are not probabilities (SVM margins) get no ECE."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro", **FAST),
        "balanced_acc": MulticlassRecall(num_classes, average="macro", **FAST),
        "f1_macro": MulticlassF1Score(num_classes, average="macro", **FAST),
        "auroc": MulticlassAUROC(num_classes, average="macro", **FAST),
    }
    if calibration:
        metrics["ece"] = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1", **FAST)
    if num_classes > 5:  # top-5 of five or fewer classes is always 1
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", **FAST)
    return MetricCollection(metrics, prefix=prefix)


def per_class_metrics(num_classes: int) -> MetricCollection:
    """Metrics with one value per class: logged per class name (acc_per_class is the class's
    recall), and the confusion matrix, plotted."""
    return MetricCollection(
        {
            "acc_per_class": MulticlassAccuracy(num_classes, average=None, **FAST),
            "f1_per_class": MulticlassF1Score(num_classes, average=None, **FAST),
            "auroc_per_class": MulticlassAUROC(num_classes, average=None, **FAST),
            "confusion": MulticlassConfusionMatrix(num_classes, **FAST),
        }
    )


def metric_key(name: str) -> str:
    """A class name as an MLflow-safe metric-name part."""
    # MLflow keeps ASCII letters and digits only: any other letter is spelled by its code point
    # (猫 -> u732b), so class names stay distinct.
    return "".join(
        c
        if c.isascii() and (c.isalnum() or c in "_-.")
        else f"u{ord(c):04x}"
        if c.isalnum()
        else "_"
        for c in name
    )
