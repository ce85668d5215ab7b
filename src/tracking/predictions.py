"""Per-image test predictions as a small artifact (predictions/test_predictions.csv: image,
y_true, y_pred), so a report can resample test images for confidence intervals
(src/report/intervals.py) instead of trusting one accuracy number."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch

from src.tracking.loggers import mlflow_loggers

log = logging.getLogger(__name__)
FILE = "test_predictions.csv"
ARTIFACT_DIR = "predictions"


class KeepTestPredictions(L.Callback):
    """Collects (label, argmax) of every test image in the test loader's order (the test split is
    fixed by its seed, so image i is the same image in every run on the same data set).

    Single-label, single-process only: a multi-label task has no one prediction per image, and
    DDP's sampler pads and interleaves the images across ranks, so both are skipped with a log
    line."""

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / ARTIFACT_DIR / FILE
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if isinstance(outputs, dict) and outputs["labels"].ndim == 1:
            # Kept on the device: one copy to the host at the end, not a sync per batch.
            self.batches.append((outputs["labels"], outputs["logits"].argmax(1)))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 or not self.batches:
            log.info("Per-image test predictions not kept (multi-label or several processes)")
            return
        y_true, y_pred = (torch.cat(part).cpu().numpy() for part in zip(*self.batches, strict=True))
        write_predictions(self.path, y_true, y_pred)
        for logger in mlflow_loggers(trainer.loggers):
            logger.experiment.log_artifact(logger.run_id, str(self.path), ARTIFACT_DIR)
        log.info("Per-image test predictions: %d images in %s", len(y_true), self.path)


def write_predictions(path: Path, y_true: np.ndarray, y_pred: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([np.arange(len(y_true)), y_true, y_pred]).astype(np.int64)
    np.savetxt(path, table, fmt="%d", delimiter=",", header="image,y_true,y_pred", comments="")
    return path


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) of a predictions file, in image order."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return table[:, 1], table[:, 2]


def eval_file(dataset: str, split: str, tta: bool = False) -> str:
    """The predictions file src.eval writes for a data set and split (its metrics' prefix)."""
    return f"eval_{dataset}{'' if split == 'test' else '.' + split}{'_tta' if tta else ''}.csv"


def log_predictions(
    client, run_id: str, output_dir: str | Path | None, y_true, y_pred, file: str = FILE
) -> None:
    """Write predictions/<file> under output_dir (None: a temporary folder) and attach it to the
    run (an ended run still takes artifacts)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(output_dir if output_dir is not None else scratch) / ARTIFACT_DIR
        path = write_predictions(folder / file, np.asarray(y_true), np.asarray(y_pred))
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)


def run_correctness(
    client, run_id: str, cache_dir: str | Path, file: str = FILE
) -> np.ndarray | None:
    """Per-image correctness (bool [n]) of a finished run, from a predictions artifact: the test
    split's (default) or one src.eval wrote (`eval_file`); None when the run has none (e.g.
    trained before the artifact existed)."""
    from mlflow.exceptions import MlflowException

    target = Path(cache_dir) / run_id
    try:
        local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{file}", str(target))
    except (MlflowException, OSError):
        return None
    y_true, y_pred = read_predictions(local)
    return y_true == y_pred
