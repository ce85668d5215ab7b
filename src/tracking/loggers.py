"""Lightning's loggers of a training run: its MLflow ones, the run's metadata, its failure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger

log = logging.getLogger(__name__)


def mlflow_loggers(loggers: list[Logger]) -> list[MLFlowLogger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def log_run_metadata(
    loggers: list[Logger], params: dict[str, Any], tags: dict[str, str], config_file: Path
) -> None:
    """Every logger gets the flattened config; MLflow also gets the tags and the resolved YAML."""
    for logger in loggers:
        logger.log_hyperparams(params)
    for logger in mlflow_loggers(loggers):
        for key, value in tags.items():
            logger.experiment.set_tag(logger.run_id, key, str(value))
        logger.experiment.log_artifact(logger.run_id, str(config_file))
        log.info("MLflow run %s in %s", logger.run_id, logger._tracking_uri)


def record_failure(loggers: list[Logger], error: BaseException) -> None:
    """End MLflow runs FAILED (KILLED on Ctrl-C) with the error as a tag, whatever stage failed.

    A run stopped by an Optuna pruner did what it was asked: FINISHED, tagged `pruned`."""
    from optuna import TrialPruned

    interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
    pruned = isinstance(error, TrialPruned)
    status = "FINISHED" if pruned else "KILLED" if interrupted else "FAILED"
    for logger in mlflow_loggers(loggers):
        if logger._initialized:
            tag = ("pruned", "true") if pruned else ("error", f"{type(error).__name__}: {error}")
            logger.experiment.set_tag(logger.run_id, tag[0], tag[1][:5000])
            logger.experiment.set_terminated(logger.run_id, status)
