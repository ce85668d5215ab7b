"""The one LightningModule: a built timm model, a strategy, optimizer/scheduler factories, metrics."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lightning.pytorch as L
import torch
from torch import nn

from src.models.schedulers import Schedule, constant
from src.models.tasks import MultiLabel, SingleLabel
from src.regularisation import Regularisation
from src.strategies import Strategy
from src.strategies.groups import stage_of

log = logging.getLogger(__name__)


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], strategy: Strategy, model: nn.Module
) -> torch.optim.Optimizer:
    """The strategy's named groups, each at the optimizer's lr x its lr_scale."""
    groups = [g for g in strategy.param_groups(model) if g["params"]]
    optimizer = factory(groups)
    exempt = sum(len(g["params"]) for g in optimizer.param_groups if not g.get("weight_decay"))
    log.info(
        "Weight decay on %d tensors, none on %d (norms, biases, the model's no_weight_decay())",
        sum(len(g["params"]) for g in optimizer.param_groups) - exempt,
        exempt,
    )
    for group in optimizer.param_groups:  # torch schedulers ignore lr_scale: apply it here
        group["lr"] *= group.pop("lr_scale")
    return optimizer


def factory_keywords(factory: Callable) -> dict:
    """The arguments a (nested) partial will pass: Hydra's `_partial_` factory wrapped by
    functools.partial (the preset's weight decay) keeps its own keywords one level down."""
    inner = getattr(factory, "func", None)
    return {
        **(factory_keywords(inner) if inner is not None else {}),
        **getattr(factory, "keywords", {}),
    }


def check_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
) -> Callable[..., torch.optim.Optimizer]:
    """Build it once on a dummy parameter, so torch's own checks (lr, betas, eps, weight decay)
    refuse bad values before any work, with the keys they concern."""
    keywords = factory_keywords(factory)
    lr = keywords.get("lr")
    if lr is not None and lr <= 0:  # torch accepts 0, which trains nothing
        raise ValueError(f"optimizer.lr={lr}: must be > 0.")
    for key, value in keywords.items():  # torch accepts inf, which makes every weight NaN
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"optimizer.{key}={value}: must be a finite number.")
    try:
        factory([nn.Parameter(torch.zeros(1))])
    except ValueError as error:
        raise ValueError(
            f"optimizer: {error}. Check optimizer.lr (> 0) and its other keys."
        ) from None
    return factory


class TransferModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[int], Schedule] | None,
        regularisation: Regularisation,
        class_names: list[str],
        task: SingleLabel | MultiLabel | None = None,
    ):
        """task: single-label (the default) or multi-label; it owns the loss and the metrics."""
        super().__init__()
        self.model, self.strategy, self.regularisation = model, strategy, regularisation
        self.task = task if task is not None else SingleLabel(class_names)
        self.criterion = self.task.criterion(regularisation)  # training loss (soft under mixup)
        self.mixup = self.task.mixup(regularisation)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler or constant
        self.class_names = class_names

    @property
    def confusion(self) -> dict[str, torch.Tensor]:
        """stage -> the last epoch's confusion matrix, for plots (single-label only)."""
        return self.task.confusion

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout, mixup and per-image augmentation draw from the global generators: a resumed
        # run only repeats an uninterrupted one if they continue from where the checkpoint was.
        checkpoint["rng_states"] = _rng_states()
        checkpoint["class_names"] = self.class_names  # so predict can name what it sees
        # What src.inference names when a checkpoint meets another backbone's config.
        checkpoint["architecture"] = (getattr(self.model, "pretrained_cfg", None) or {}).get(
            "architecture"
        )
        self.strategy.on_save_checkpoint(checkpoint)  # after the callbacks' (an average's) changes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.strategy.on_load_checkpoint(checkpoint)
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

    def configure_model(self) -> None:
        # Before DDP wraps the model: a fixed frozen set is frozen now, so DDP reduces only what
        # trains (src/models/distributed.py). on_train_epoch_start sets the same state again.
        if not self.strategy.changes_trainable:
            self.strategy.apply(self.model, self.strategy.param_groups(self.model), epoch=0)

    def on_train_epoch_start(self) -> None:
        # Also runs first thing after a resume, so the restored epoch gets its own freeze state.
        self.strategy.apply(self.model, self.trainer.optimizers[0].param_groups, self.current_epoch)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        features = None
        if self.regularisation.needs_features:  # BSS acts on the pooled features
            features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
            logits = self.model.get_classifier()(features)
        else:
            logits = self(images)
        loss = self.criterion(logits, targets)
        for name, term in self.regularisation.penalties(self.model, features).items():
            self.log(f"train/{name}", term, on_step=False, on_epoch=True, sync_dist=True)
            loss = loss + term
        # Tensors are averaged over DDP ranks (sync_dist); torchmetrics objects sync their own
        # state (counts) across ranks when computed, so acc is exact, not a mean of rank means.
        # Not on the bar: Lightning would read a per-step bar value back after every batch (a
        # device sync); the bar shows the loss of logging steps (src/models/progress.py).
        self.log("train/loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        self.log_dict(self.task.train_step(logits, labels), on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        if self.task.probabilistic:  # an SVM's margins have no loss worth logging
            loss = self.task.eval_loss(logits, labels)
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log_dict(
            self.task.eval_step(stage, logits, labels), on_epoch=True, prog_bar=stage == "val"
        )
        return {"labels": labels.detach(), "logits": logits.detach()}

    def _epoch_end(self, stage: str) -> None:
        """Values that need the whole epoch: per class (and, multi-label, every score). Computed
        torchmetrics are synced over DDP ranks, so every rank logs the same value."""
        for key, value in self.task.epoch_end(stage, self.trainer.sanity_checking).items():
            self.log(key, value, prog_bar=key == f"{stage}/auroc", sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test")  # KeepTestPredictions keeps them per image

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        """All named groups at once; one LambdaLR multiplies schedule x strategy factor per group."""
        optimizer = build_optimizer(self.optimizer_factory, self.strategy, self.model)
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        schedule = self.scheduler_factory(total_steps)

        def group_factor(name: str) -> Callable[[int], float]:
            stage = stage_of(name)
            return lambda step: (
                schedule(step) * self.strategy.lr_factor(stage, step / steps_per_epoch)
            )

        factors = [group_factor(g["name"]) for g in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _rng_states() -> dict:
    import random

    import numpy as np

    states = {
        "torch": torch.get_rng_state(),
        # Only tensors and plain Python values, so the checkpoint still loads with weights_only.
        "numpy": [
            value.tolist() if isinstance(value, np.ndarray) else value
            for value in np.random.get_state()
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
