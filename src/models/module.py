"""The one LightningModule: a built timm model, a strategy, optimizer/scheduler factories, metrics."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as L
import torch
from torch import nn

from src.models.metrics import metric_key, per_class_metrics, scalar_metrics
from src.models.schedulers import Schedule, constant
from src.regularisation import Regularisation
from src.strategies import Strategy
from src.strategies.groups import stage_of


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], strategy: Strategy, model: nn.Module
) -> torch.optim.Optimizer:
    """The strategy's named groups, each at the optimizer's lr x its lr_scale."""
    groups = [g for g in strategy.param_groups(model) if g["params"]]
    optimizer = factory(groups)
    for group in optimizer.param_groups:  # torch schedulers ignore lr_scale: apply it here
        group["lr"] *= group.pop("lr_scale")
    return optimizer


def check_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
) -> Callable[..., torch.optim.Optimizer]:
    """Build it once on a dummy parameter, so torch's own checks (lr, betas, eps, weight decay)
    refuse bad values before any work, with the keys they concern."""
    lr = getattr(factory, "keywords", {}).get("lr")
    if lr is not None and lr <= 0:  # torch accepts 0, which trains nothing
        raise ValueError(f"optimizer.lr={lr}: must be > 0.")
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
    ):
        super().__init__()
        self.model, self.strategy, self.regularisation = model, strategy, regularisation
        self.criterion = regularisation.criterion()  # training loss (soft targets under mixup)
        self.eval_criterion = nn.CrossEntropyLoss()  # val/test loss: hard labels, no smoothing
        self.mixup = regularisation.mixup(len(class_names))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler or constant
        self.class_names = class_names
        num_classes = len(class_names)
        self.train_acc = scalar_metrics(num_classes, "train/")["acc"]
        self.val_metrics = scalar_metrics(num_classes, "val/")
        self.test_metrics = scalar_metrics(num_classes, "test/")
        self.val_per_class = per_class_metrics(num_classes)
        self.test_per_class = per_class_metrics(num_classes)
        self.confusion: dict[str, torch.Tensor] = {}  # stage -> last epoch's matrix, for plots

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout, mixup and per-image augmentation draw from the global generators: a resumed
        # run only repeats an uninterrupted one if they continue from where the checkpoint was.
        checkpoint["rng_states"] = _rng_states()
        checkpoint["class_names"] = self.class_names  # so predict can name what it sees

    def on_load_checkpoint(self, checkpoint: dict) -> None:
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
        self.train_acc.update(logits, labels)  # epoch value only: no per-step compute
        # Tensors are averaged over DDP ranks (sync_dist); torchmetrics objects sync their own
        # state (counts) across ranks when computed, so acc is exact, not a mean of rank means.
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, stage: str, scalars, per_class) -> None:
        images, labels = batch
        logits = self(images)
        loss = self.eval_criterion(logits, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        scalars.update(logits, labels)
        per_class.update(logits, labels)
        self.log_dict(scalars, on_epoch=True, prog_bar=stage == "val")

    def _log_per_class(self, stage: str, per_class) -> None:
        values = per_class.compute()  # synced over DDP ranks: the same on every rank
        per_class.reset()
        if self.trainer.sanity_checking:
            return
        for name, acc in zip(self.class_names, values["acc_per_class"], strict=True):
            self.log(f"{stage}/acc_class/{metric_key(name)}", acc, sync_dist=True)
        self.confusion[stage] = values["confusion"].cpu()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics, self.val_per_class)

    def on_validation_epoch_end(self) -> None:
        self._log_per_class("val", self.val_per_class)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics, self.test_per_class)

    def on_test_epoch_end(self) -> None:
        self._log_per_class("test", self.test_per_class)

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
