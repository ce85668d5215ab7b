"""Score a trained model on any data set's split and file the numbers in its MLflow run."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from src.data import TransferDataModule
from src.errors import InvalidInput
from src.inference.trained import Trained
from src.models.metrics import scalar_metrics

log = logging.getLogger(__name__)


def check_classes(
    model: nn.Module, datamodule: TransferDataModule, dataset: str, trained: Trained | None = None
) -> None:
    """A head scores only a single-label data set of the same classes, named alike and in the
    same order (a digits model on Fashion-MNIST has 10 classes too, but not the same ones)."""
    if datamodule.multilabel or (trained is not None and trained.thresholds is not None):
        raise InvalidInput(
            f"dataset={dataset} or the model is multi-label: src.eval scores single-label models "
            "on single-label data. The training run holds the multi-label test metrics "
            "(test/auroc, test/ap, test/f1_macro, per label)."
        )
    if model.num_classes != datamodule.num_classes:
        raise InvalidInput(
            f"dataset={dataset} has {datamodule.num_classes} classes but the model was trained "
            f"on {model.num_classes}: evaluate on a data set with the same classes."
        )
    names, trained_names = [str(c) for c in datamodule.classes], trained and trained.class_names
    if trained_names and names != [str(c) for c in trained_names]:
        order = sorted(names) == sorted(str(c) for c in trained_names)
        raise InvalidInput(
            f"dataset={dataset} has the classes {names[:10]}"
            + (" in another order" if order else "")
            + f", but the model was trained on {list(trained_names)[:10]}: its scores would be "
            "filed against the wrong labels. Evaluate on data with the training's classes."
        )


def check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise InvalidInput(f"split={split}: must be train, val or test.")


def evaluate(
    model: nn.Module, datamodule: TransferDataModule, split: str, calibration: bool = True
) -> dict[str, float]:
    """The training's scalar metrics (acc, f1_macro, ece, acc_top5), over the whole split;
    calibration=False (an SVM's margins): no ECE."""
    return evaluate_per_image(model, datamodule, split, calibration)[0]


@torch.inference_mode()
def evaluate_per_image(
    model: nn.Module, datamodule: TransferDataModule, split: str, calibration: bool = True
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """(metrics as `evaluate`, (y_true, y_pred) per image in the split's order), so a report can
    resample the images for an interval; None for a multi-label model (no one prediction)."""
    check_split(split)
    device = next(model.parameters()).device
    metrics = scalar_metrics(model.num_classes, prefix="", calibration=calibration).to(device)
    kept = []
    for images, labels in datamodule.eval_batches(split, device):
        logits = model(images)
        metrics.update(logits, labels.to(device))
        if labels.ndim == 1:
            kept.append((labels.cpu(), logits.argmax(1).cpu()))
    scores = {key: float(value) for key, value in metrics.compute().items()}
    if not kept:
        return scores, None
    y_true, y_pred = (torch.cat(part).numpy() for part in zip(*kept, strict=True))
    return scores, (y_true, y_pred)


def eval_prefix(dataset: str, split: str) -> str:
    """eval/<dataset>/ for the test split (the usual case), eval/<dataset>.<split>/ otherwise."""
    return f"eval/{dataset}/" if split == "test" else f"eval/{dataset}.{split}/"


def log_eval(trained: Trained, prefix: str, metrics: dict[str, float]) -> str | None:
    """Into the training run (an ended run still takes metrics), with where they came from."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    run_id = trained.run_id or _run_of(client, trained)
    if run_id is None:
        log.warning("No MLflow run owns %s: metrics only printed.", trained.checkpoint)
        return None
    for key, value in metrics.items():
        client.log_metric(run_id, prefix + key, value)
    for key, value in trained.provenance.items():
        client.set_tag(run_id, prefix + key, value)
    client.log_text(run_id, cross_domain_table(client.get_run(run_id).data.metrics), TABLE)
    log.info("Logged %d metrics under %s into run %s", len(metrics), prefix, run_id)
    return run_id


TABLE = "eval/cross_domain.csv"


def cross_domain_table(metrics: dict[str, float]) -> str:
    """Every eval/<dataset>/<metric> of a run as CSV, one row per data set: after a multirun over
    data sets, the run holds the whole cross-domain table."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            rows.setdefault(parts[1], {})[parts[2]] = value
    columns = sorted({column for row in rows.values() for column in row})
    lines = [",".join(["dataset", *columns])]
    for dataset, row in sorted(rows.items()):
        lines.append(",".join([dataset, *(f"{row.get(c, float('nan')):.4f}" for c in columns)]))
    return "\n".join(lines) + "\n"


def _run_of(client, trained: Trained) -> str | None:
    """The run whose output_dir holds the checkpoint (ckpt_path given instead of a run id)."""
    output_dir = str(trained.checkpoint.resolve().parent.parent)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.output_dir = '{output_dir}'", max_results=1)
    return runs[0].info.run_id if runs else None
