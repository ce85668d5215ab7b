"""Faults on purpose, driven by the environment, so the killed launch and the resuming one share
one config (and thus one config fingerprint), exactly as a researcher re-running the same
command would.

KillFromEnv sends TRANSFERLAB_KILL_SIGNAL (KILL, or TERM) to its own process at one point:
- TRANSFERLAB_KILL_AT="e:b": before training batch b of epoch e (mid-epoch, or before the first
  checkpoint with "0:1");
- TRANSFERLAB_KILL_AFTER_BEST="e": after epoch e's best checkpoint is saved, before last.ckpt;
- TRANSFERLAB_KILL_IN_TEST=1: at the first test batch;
- TRANSFERLAB_KILL_IN_FEATURES=1: after the first batch of feature extraction
  (strategy=feature_extract).
It is built with the other callbacks, before anything runs, so it can also arm the points that
are outside Lightning's loops. Only the first launch sets these variables.
"""

from __future__ import annotations

import os
import signal
import time

import lightning.pytorch as L


def _die() -> None:
    name = os.environ.get("TRANSFERLAB_KILL_SIGNAL", "KILL")
    # SIGKILL ends the process here; SIGTERM is raised at Lightning's next safe point (in its
    # loops) or at once (outside them, src.errors.sigterm_raises).
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


class KillFromEnv(L.Callback):
    def __init__(self) -> None:
        if os.environ.get("TRANSFERLAB_KILL_IN_FEATURES"):
            from src.data import TransferDataModule

            original = TransferDataModule.eval_batches

            def eval_batches(datamodule, *args, **kwargs):
                for index, batch in enumerate(original(datamodule, *args, **kwargs)):
                    if index == 1:
                        _die()
                    yield batch

            TransferDataModule.eval_batches = eval_batches

    def setup(self, trainer, pl_module, stage) -> None:
        after_best = os.environ.get("TRANSFERLAB_KILL_AFTER_BEST")
        checkpoint = trainer.checkpoint_callback
        if after_best and checkpoint is not None:
            save_last = checkpoint._save_last_checkpoint

            def killed_before_last(trainer, monitor_candidates):
                if trainer.current_epoch == int(after_best):
                    _die()
                save_last(trainer, monitor_candidates)

            checkpoint._save_last_checkpoint = killed_before_last

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(float(os.environ.get("TRANSFERLAB_STEP_SLEEP", 0)))  # time to send a signal
        target = os.environ.get("TRANSFERLAB_KILL_AT")
        if target and (trainer.current_epoch, batch_idx) == tuple(map(int, target.split(":"))):
            _die()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if os.environ.get("TRANSFERLAB_KILL_IN_TEST"):
            _die()


class PoisonWeights(L.Callback):
    """Fills the classifier's weights with NaN before training step `at_step`."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            pl_module.model.get_classifier().weight.data.fill_(float("nan"))


# A child that takes a run's lock (src.tracking.claim.RunLock) on argv[1], says "locked", and
# holds it as a live training process would: `python -c HOLD_LOCK <output_dir>`.
HOLD_LOCK = """
import sys, time
from src.tracking.claim import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""
