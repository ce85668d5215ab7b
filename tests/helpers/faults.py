"""Faults on purpose. KillFromEnv SIGKILLs its own process at (epoch, batch) given by TRANSFERLAB_KILL_AT="e:b".

Driven by the environment, so the killed launch and the resuming one share one config (and thus
one config fingerprint), exactly as a researcher re-running the same command would."""

from __future__ import annotations

import os
import signal
import time

import lightning.pytorch as L


class KillFromEnv(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(float(os.environ.get("TRANSFERLAB_STEP_SLEEP", 0)))  # time to send a signal
        target = os.environ.get("TRANSFERLAB_KILL_AT")
        if target and (trainer.current_epoch, batch_idx) == tuple(map(int, target.split(":"))):
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonWeights(L.Callback):
    """Fills the classifier's weights with NaN before training step `at_step`."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            pl_module.model.get_classifier().weight.data.fill_(float("nan"))
