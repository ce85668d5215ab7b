"""Callbacks of a training run: plots as artifacts, and one config on every DDP rank."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L

from src.tracking.loggers import mlflow_loggers
from src.tracking.plots import plot_confusion, plot_learning_curves

# Per-epoch values kept for the learning-curve plot.
CURVE_METRICS = ("train/loss_epoch", "val/loss", "train/acc", "val/acc", "val/auroc")


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
    """The learning rate of every named parameter group, once per epoch, as `lr/<group>`.

    One metric per stage (`lr/stem`, ..., `lr/head`): a group's norms-and-biases twin
    (`<group>_no_wd`) always shares its rate, so it is not logged twice. Values are Python floats
    already: no device sync in the training step. Runs logged before the rename hold the same
    values as `z_lr/<group>` (a prefix that only sorted them last in the MLflow UI).

    Not Lightning's LearningRateMonitor: it logs each `_no_wd` twin again and names keys
    `lr-<Optimizer>/<group>`; ours is one `lr/<stage>` each."""

    PREFIX = "lr/"

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
        # The step Lightning's own self.log uses (its logger connector reads this counter; no
        # public property holds it), so the rates line up with the metrics of the same step.
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
