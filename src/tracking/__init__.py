"""Tracking: run metadata (params, tags, config), plots as artifacts, and the run's final status."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.loggers import Logger, MLFlowLogger

from src.tracking.plots import plot_confusion, plot_learning_curves
from src.tracking.store import PATH_KEY

log = logging.getLogger(__name__)

__all__ = [
    "GroupLearningRates",
    "RunArtifacts",
    "SameConfigOnEveryRank",
    "git_state",
    "log_dataset",
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


def split_paths(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(params, path tags) of a nested config, flattened with '/' as Lightning's loggers do."""
    from lightning.fabric.utilities.logger import _flatten_dict

    flat = _flatten_dict(params, delimiter="/")
    paths = {key: str(value) for key, value in flat.items() if PATH_KEY.search(key)}
    return {key: value for key, value in flat.items() if key not in paths}, paths


def log_run_metadata(
    loggers: list[Logger], params: dict[str, Any], tags: dict[str, str], config_file: Path
) -> None:
    """Every logger gets the flattened config; MLflow also gets the tags and the resolved YAML.
    Paths in the config become tags (see PATH_KEY)."""
    params, paths = split_paths(params)
    for logger in loggers:
        logger.log_hyperparams(params)
    for logger in mlflow_loggers(loggers):
        for key, value in {**paths, **tags}.items():
            logger.experiment.set_tag(logger.run_id, key, str(value)[:5000])
        logger.experiment.log_artifact(logger.run_id, str(config_file))
        log.info("MLflow run %s in %s", logger.run_id, logger._tracking_uri)


def log_dataset(loggers: list[Logger], name: str, source: dict, datamodule, subset: dict) -> None:
    """The run's data set as an MLflow input (the UI's Datasets column): its name, where the
    images come from, a digest of the exact images of every split, and the split sizes with the
    subsampling that made them (fraction, samples per class) as its profile."""
    import hashlib
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    splits = datamodule.splits
    sizes = {split: len(getattr(splits, split)) for split in ("train", "val", "test")}
    digest = hashlib.sha1(
        json.dumps([datamodule.identity(split) for split in sizes], sort_keys=True).encode()
    ).hexdigest()[:12]
    profile = {**{f"{split}_images": n for split, n in sizes.items()},
               "classes": len(datamodule.classes), **subset}  # fmt: skip
    local = any(key in source for key in ("root", "path"))
    dataset = Dataset(
        name=name, digest=digest, source_type="local" if local else "code",
        source=json.dumps(source, sort_keys=True, default=str), profile=json.dumps(profile),
    )  # fmt: skip
    context = [InputTag("mlflow.data.context", "training")]
    for logger in mlflow_loggers(loggers):
        logger.experiment.log_inputs(logger.run_id, [DatasetInput(dataset, context)])


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


class GroupLearningRates(L.Callback):
    """The learning rate of every named parameter group, once per epoch, as `z_lr/<group>`.

    One metric per stage (`z_lr/stem`, ..., `z_lr/head`): a group's norms-and-biases twin
    (`<group>_no_wd`) always shares its rate, so it is not logged twice. The `z_` prefix sorts the
    rates after `test/`, `train/` and `val/` in the MLflow UI, where a run's charts open on what
    it scored. Values are Python floats already: no device sync in the training step."""

    PREFIX = "z_lr/"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.loggers:
            return
        from src.strategies.groups import stage_of

        rates: dict[str, float] = {}
        several = len(trainer.optimizers) > 1
        for index, optimizer in enumerate(trainer.optimizers):
            for number, group in enumerate(optimizer.param_groups):
                name = stage_of(group.get("name") or f"group{number}")
                key = f"{self.PREFIX}{f'{index}/' if several else ''}{name}"
                rates.setdefault(key, float(group["lr"]))
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=step)


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
