"""Tracking: run metadata (params, tags, config), plots as artifacts, and the run's final status."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.loggers import Logger, MLFlowLogger

from src.tracking.plots import plot_confusion, plot_learning_curves

log = logging.getLogger(__name__)

__all__ = [
    "RunArtifacts",
    "SameConfigOnEveryRank",
    "git_state",
    "log_run_metadata",
    "record_failure",
    "mlflow_loggers",
]

# Per-epoch values kept for the learning-curve plot.
CURVE_METRICS = ("train/loss_epoch", "val/loss", "train/acc", "val/acc", "val/auroc")


def mlflow_loggers(loggers: list[Logger]) -> list[MLFlowLogger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def git_state(root: str | Path = ".") -> dict[str, str]:
    """The commit this code ran from and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": str(bool(git("status", "--porcelain"))),
        }
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


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
    """End MLflow runs FAILED (KILLED on SIGTERM or Ctrl-C) with the reason as a tag, whatever
    stage failed: `error` for a failure, `killed_reason` for an interruption.

    A run stopped by an Optuna pruner did what it was asked: FINISHED, tagged `pruned`."""
    from optuna import TrialPruned

    from src.errors import is_sigterm
    from src.tracking.claim import KILLED_REASON

    interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
    pruned = isinstance(error, TrialPruned)
    status = "FINISHED" if pruned else "KILLED" if interrupted else "FAILED"
    if pruned:
        tag = ("pruned", "true")
    elif interrupted:
        tag = (KILLED_REASON, "SIGTERM" if is_sigterm(error) else type(error).__name__)
    else:
        tag = ("error", f"{type(error).__name__}: {error}")
    for logger in mlflow_loggers(loggers):
        if logger._initialized:
            logger.experiment.set_tag(logger.run_id, tag[0], tag[1][:5000])
            logger.experiment.set_terminated(logger.run_id, status)


class RunArtifacts(L.Callback):
    """Learning curves and confusion matrices as PNGs in output_dir/plots, logged to MLflow."""

    def __init__(self, output_dir: str):
        self.plot_dir = Path(output_dir) / "plots"
        self.history: dict[str, list[tuple[int, float]]] = {key: [] for key in CURVE_METRICS}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # In Lightning 2 this runs after the epoch's validation, so val/* are this epoch's values.
        for key in CURVE_METRICS:
            if key in trainer.callback_metrics:
                self.history[key].append(
                    (trainer.current_epoch, float(trainer.callback_metrics[key]))
                )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        paths = [plot_learning_curves(self.history, self.plot_dir / "learning_curves.png")]
        if "val" in pl_module.confusion:
            paths.append(
                plot_confusion(
                    pl_module.confusion["val"],
                    pl_module.class_names,
                    self.plot_dir / "confusion_val.png",
                    "validation (last epoch)",
                )
            )
        self._log(trainer, paths)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and "test" in pl_module.confusion:
            path = plot_confusion(
                pl_module.confusion["test"],
                pl_module.class_names,
                self.plot_dir / "confusion_test.png",
                "test",
            )
            self._log(trainer, [path])

    @staticmethod
    def _log(trainer: L.Trainer, paths: list[Path]) -> None:
        for logger in mlflow_loggers(trainer.loggers):
            for path in paths:
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="plots")


class SameConfigOnEveryRank(L.Callback):
    """Under DDP, every rank must train the same config: a rank started with other overrides (a
    sweep's command line re-run with other sampled values, a stale script on one node) would
    average gradients of different hyperparameters without any error. The ranks exchange their
    config fingerprints once, refuse to train if they differ, and rank 0 records them in its run."""

    def __init__(self, fingerprint: str):
        self.fingerprint, self.checked = fingerprint, False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.checked or trainer.world_size == 1:
            return
        import torch

        halves = [int(self.fingerprint[i : i + 8], 16) for i in (0, 8)]  # 64 bits as 2 int64
        mine = torch.tensor(halves, dtype=torch.int64, device=trainer.strategy.root_device)
        gathered = trainer.strategy.all_gather(mine).reshape(-1, 2).tolist()
        prints = [f"{a:08x}{b:08x}" for a, b in gathered]
        if len(set(prints)) > 1:
            raise RuntimeError(f"DDP ranks composed different configs (fingerprints {prints}).")
        self.checked = True
        for logger in mlflow_loggers(trainer.loggers):
            logger.experiment.set_tag(logger.run_id, "ddp.world_size", str(trainer.world_size))
            logger.experiment.set_tag(logger.run_id, "ddp.config_fingerprints", ",".join(prints))
