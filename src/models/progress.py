"""The training progress bar, and when a step may read values back from the device.

Reading a tensor's value (a loss for the bar, a guard's flag) makes the host wait for the device.
Lightning reads logged values on logging steps (`trainer.log_every_n_steps`) and at epoch ends,
except values logged with `prog_bar=True` and `on_step=True`, which it reads after every batch.
So nothing logs a per-step value to the bar, and whatever needs a value waits for a logging step:
the steps between them never stall a GPU's queue (tests/bench/test_syncs.py counts this).
"""

from __future__ import annotations

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar


def is_logging_step(trainer: L.Trainer) -> bool:
    """From on_train_batch_end: Lightning logs this batch's values (its rule, after the optimizer
    step, so global_step already counts this batch)."""
    every = trainer.log_every_n_steps
    return (bool(every) and trainer.global_step % every == 0) or trainer.should_stop


class LossProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, plus the training loss of the last logging step: count and speed
    move every batch, the loss is read where Lightning logs it."""

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and is_logging_step(trainer):
            self.loss = float(loss)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self.loss is not None:
            metrics["train/loss"] = self.loss
        return metrics
