"""The job's side of a sweep: report the monitored metric to its Optuna trial every epoch and
stop when the pruner says so.

The sweeper puts the trial's identity (storage, study, number) and the pruner into the job's config
(`callbacks.optuna_trial`), and the job reopens the trial from the storage: that works in-process
and in a job launched anywhere that reaches the storage. Under DDP only rank 0 talks to Optuna;
its decision is broadcast so every rank stops at the same epoch.
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as L
import optuna

from src.sweeps.runs import RUN_ATTR
from src.sweeps.study import open_storage
from src.tracking.loggers import mlflow_loggers

log = logging.getLogger(__name__)

CONTINUE, PRUNE, NOT_FINITE = 0, 1, 2


class TrialReporter(L.Callback):
    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_number: int,
        monitor: str,
        pruner: optuna.pruners.BasePruner | None = None,
    ):
        self.storage, self.study_name, self.number = storage, study_name, trial_number
        self.monitor = monitor
        self.pruner = pruner or optuna.pruners.NopPruner()
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.trial is not None or not trainer.is_global_zero:
            return
        study = optuna.load_study(
            study_name=self.study_name, storage=open_storage(self.storage), pruner=self.pruner
        )
        # _storage/_study_id: optuna.Trial(study, trial_id) is the public way to report to and
        # prune an existing trial, and only the storage maps a trial number to its id.
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, self.number
        )
        self.trial = optuna.Trial(study, trial_id)
        self._link_runs(trainer, study)

    def _link_runs(self, trainer: L.Trainer, study: optuna.Study) -> None:
        """Remember this job's MLflow run in its trial (the sweeper created it nested, tagged)."""
        for logger in mlflow_loggers(trainer.loggers):
            self.trial.set_user_attr(RUN_ATTR, logger.run_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"monitor.metric={self.monitor!r} is not logged; logged: {sorted(trainer.callback_metrics)}"
            )
        value, epoch = float(trainer.callback_metrics[self.monitor]), trainer.current_epoch
        decision = CONTINUE
        if trainer.is_global_zero:
            decision = self._decide(value, epoch)
        decision = trainer.strategy.broadcast(decision, src=0)
        if decision == NOT_FINITE:
            # A diverged run is a failed trial, not a poor one: no pruner should rank it.
            raise FloatingPointError(f"{self.monitor}={value} at epoch {epoch}")
        if decision == PRUNE:  # the sweep's worker logs the one line saying so
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.monitor}={value:.4f}")

    def _decide(self, value: float, epoch: int) -> int:
        if not math.isfinite(value):
            return NOT_FINITE
        self.trial.report(value, step=epoch)
        return PRUNE if self.trial.should_prune() else CONTINUE
