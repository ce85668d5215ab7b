"""Temperature scaling at the end of training, opt-in (`callbacks.calibrate.enabled=true`): the
run's best checkpoint calibrated on validation into a child run (kind=calibrated), exactly as
`python -m src.posthoc method=calibrate run_id=<the run>` would make it afterwards."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as L

log = logging.getLogger(__name__)


def calibrate_after_training(enabled: bool, output_dir: str, max_iter: int = 100):
    """The callback, or None (switched off): the Trainer gets only callbacks that act."""
    return CalibrateAfterTraining(output_dir, max_iter) if enabled else None


class CalibrateAfterTraining(L.Callback):
    def __init__(self, output_dir: str, max_iter: int = 100):
        self.output_dir, self.max_iter = Path(output_dir), max_iter

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from src.errors import InvalidInput
        from src.posthoc.calibrate import Calibrate
        from src.posthoc.derive import derive
        from src.tracking.loggers import mlflow_loggers

        loggers = mlflow_loggers(trainer.loggers)
        if not trainer.is_global_zero or not loggers:
            if trainer.is_global_zero:
                log.warning("callbacks.calibrate: no MLflow logger, no run to calibrate.")
            return
        run_id, uri = loggers[0].run_id, loggers[0]._tracking_uri
        try:
            made, metrics = derive(
                Calibrate(self.max_iter), [run_id], uri, "best", None, self.output_dir
            )
        except InvalidInput as error:  # e.g. an SVM head: the training run itself stays intact
            log.warning("callbacks.calibrate: not calibrated: %s", error)
            return
        log.info(
            "Calibrated child run %s: T = %.3f, val NLL %.4f -> %.4f",
            made,
            metrics["temperature"],
            metrics["val/nll_uncalibrated"],
            metrics["val/nll"],
        )
