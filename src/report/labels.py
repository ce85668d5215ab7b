"""Words for a reader in place of metric keys, config keys and config values: "Test accuracy
(%)" for test/acc, "Data set" for dataset, "LP-FT" for lp_ft, "10%" for a fraction of 0.1. A
report's `labels` (conf/report.yaml) add to or replace these; anything unknown is shown as it is."""

from __future__ import annotations

SPLITS = {"test": "Test", "val": "Validation", "train": "Training", "eval": "Evaluation"}
METRICS = {
    "acc": "accuracy",
    "balanced_acc": "balanced accuracy",
    "f1_macro": "macro F1",
    "auroc": "AUROC",
    "ap": "average precision",
    "ece": "expected calibration error",
    "acc_top5": "top-5 accuracy",
    "loss": "loss",
    "loss_epoch": "loss",
}
PERCENT = {"acc", "balanced_acc", "f1_macro", "auroc", "ap", "ece", "acc_top5"}
KEYS = {
    "dataset": "Data set",
    "strategy": "Strategy",
    "fraction": "Training data",
    "samples_per_class": "Images per class",
    "backbone": "Backbone",
    "pretrained": "Pretrained",
    "regularisation": "Regularisation",
    "seed": "Seed",
    "trainer/max_epochs": "epochs",
    "backbone/input_size": "image size",
    "optimizer/lr": "learning rate",
    "optimizer/_target_": "optimizer",
    "strategy/probe_epochs": "LP-FT probe epochs",
    "regularisation/weight_decay": "weight decay",
    "dataset/batch_size": "batch size",
    "backbone/pretrained": "pretrained weights",
    "dataset/fraction": "fraction of the data",
    "dataset/samples_per_class": "images per class",
}
VALUES = {
    "scratch": "Scratch",
    "linear_probe": "Linear probe",
    "feature_extract": "Feature extraction",
    "finetune": "Fine-tuning",
    "partial": "Partial fine-tuning",
    "lp_ft": "LP-FT",
    "gradual_unfreeze": "Gradual unfreezing",
    "layer_decay": "Layer-wise LR decay",
    "surgical": "Surgical fine-tuning",
    "fashion_mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "fashion_mnist_3k": "Fashion-MNIST (3k)",
    "digits": "Digits",
    "textures": "Textures",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "eurosat": "EuroSAT",
    "dtd": "DTD",
    "flowers102": "Flowers-102",
    "pets": "Oxford Pets",
    "food101": "Food-101",
}


def metric_label(metric: str, scale: float = 1.0, extra: dict | None = None) -> str:
    """'test/acc' -> 'Test accuracy (%)' at scale 100; an unknown metric stays its key."""
    if extra and metric in extra:
        return extra[metric]
    split, _, name = metric.partition("/")
    if split not in SPLITS or name not in METRICS:
        return metric
    unit = " (%)" if scale == 100 and name in PERCENT else ""
    return f"{SPLITS[split]} {METRICS[name]}{unit}"


def key_label(key: str, extra: dict | None = None) -> str:
    """'tags.dataset' or 'dataset' -> 'Data set'; 'params.trainer/max_epochs' -> 'epochs'."""
    bare = key.split(".", 1)[1] if key.startswith(("tags.", "params.")) else key
    return {**KEYS, **(extra or {})}.get(bare, bare)


def value_label(key: str, value: str, extra: dict | None = None) -> str:
    """A config value as a reader reads it: names of strategies and data sets, fractions as %."""
    labels = {**VALUES, **(extra or {})}
    if value in labels:
        return labels[value]
    if key.rsplit("/", 1)[-1].endswith("fraction"):
        try:
            return f"{float(value) * 100:g}%"
        except ValueError:
            return value
    return value
