"""A non-finite training loss stops the run with a message that says what to try (or, with
policy=skip, drops that step's update). Checked without a device sync per step: the verdict is
read on the steps where Lightning reads logged values anyway (src/models/progress.py)."""

from __future__ import annotations

import logging

import lightning.pytorch as L
import torch

from src.models.progress import is_logging_step

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")


class FiniteLoss(L.Callback):
    """stop: a device-side flag collects every step's verdict, read on logging steps
    (`trainer.log_every_n_steps`) and at each epoch's last batch, where Lightning syncs anyway;
    check_every_n_steps reads it on a cadence of its own instead (a sync on each of those steps).
    skip: each step is checked before the optimizer acts (a sync per step) and a non-finite one
    updates nothing."""

    def __init__(self, policy: str = "stop", check_every_n_steps: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"callbacks.finite_loss.policy={policy!r}: choose one of {POLICIES}.")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(
                f"callbacks.finite_loss.check_every_n_steps={check_every_n_steps}: must be >= 1 "
                "(or null: on logging steps)."
            )
        self.policy, self.every = policy, check_every_n_steps
        self.bad: torch.Tensor | None = None
        self.skipped = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.policy == "skip" or loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self.bad = bad if self.bad is None else self.bad | bad
        due = (
            is_logging_step(trainer)
            if self.every is None
            else trainer.global_step % self.every == 0
        )
        if not (due or trainer.is_last_batch):
            return
        # Under DDP every rank must stop at the same step, or the others wait for it forever.
        if trainer.strategy.reduce_boolean_decision(bool(self.bad.item()), all=False):
            raise FloatingPointError(
                f"train/loss became non-finite by step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}). Try a lower optimizer.lr, "
                "trainer.gradient_clip_val=1.0, or callbacks.finite_loss.policy=skip."
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.policy != "skip":
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None  # AdamW/SGD leave parameters without a gradient alone
            self.skipped += 1
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=False, on_epoch=True)
            log.warning("Non-finite gradients at step %d: update skipped", trainer.global_step)
