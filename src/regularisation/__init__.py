"""Regularisation: one object per preset (conf/regularisation/*.yaml), each knob overridable.

head_dropout and drop_path_rate reach the backbone as it is built (backbone_arguments, timm's
drop_rate / drop_path_rate); weight_decay reaches the optimizer as it is built (optimizer); this
object owns the data augmentation, mixup/cutmix, the loss and the penalties (L2-SP, BSS), and the
early stopping (early_stopper). No other config group interpolates these keys: one owner.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from src.data.batch_transforms import BatchTransform
from src.data.preprocessing import batch_eval_transform, eval_transform
from src.regularisation.penalties import L2SP, batch_spectral_shrinkage

# name -> timm auto_augment policy (None: none); trivialaugment comes from torchvision.
AUGMENTATIONS = {
    "none": None,
    "basic": None,
    # mmax9: at magnitude 10 timm's increasing posterize keeps 0 bits, which Pillow >= 11 refuses.
    "randaugment": "rand-m9-mstd0.5-inc1-mmax9",
    "autoaugment": "original",
    "trivialaugment": None,
}


@dataclass
class Regularisation:
    head_dropout: float = 0.0
    drop_path_rate: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augmentation: str = "none"
    crop_scale: Sequence[float] = (0.6, 1.0)
    hflip: float = 0.5
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    l2sp_alpha: float = 0.0
    l2sp_beta: float = 0.0
    bss_eta: float = 0.0
    bss_k: int = 1
    early_stopping_patience: int | None = None

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"regularisation.augmentation='{self.augmentation}': choose one of {list(AUGMENTATIONS)}."
            )
        for key in ("head_dropout", "drop_path_rate", "label_smoothing", "hflip", "random_erasing"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"regularisation.{key}={getattr(self, key)}: valid range [0, 1).")
        for key in (
            "weight_decay",
            "mixup_alpha",
            "cutmix_alpha",
            "l2sp_alpha",
            "l2sp_beta",
            "bss_eta",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"regularisation.{key}={getattr(self, key)}: must be >= 0.")
        self.l2sp: L2SP | None = None

    def optimizer(self, factory: Callable[..., torch.optim.Optimizer]) -> functools.partial:
        """The optimizer factory (conf/optimizer: the update rule) with this preset's weight decay:
        the L2 penalty is a regulariser, stated once here."""
        if "weight_decay" in getattr(factory, "keywords", {}):  # +optimizer.weight_decay=...
            raise ValueError(
                "optimizer.weight_decay: weight decay is set by regularisation.weight_decay "
                "(its one owner); set that instead."
            )
        return functools.partial(factory, weight_decay=self.weight_decay)

    def early_stopper(self, monitor: str, mode: str):
        """Early stopping on the run's monitored metric with this preset's patience, or None."""
        return early_stopping(monitor, mode, self.early_stopping_patience)

    def backbone_arguments(self) -> dict[str, float]:
        """Dropout before the classifier and stochastic depth, as timm's model constructor takes
        them: this preset owns them, the backbone config does not repeat them."""
        return {"drop_rate": self.head_dropout, "drop_path_rate": self.drop_path_rate}

    # --- data ---------------------------------------------------------------------------------
    def train_transform(self, data_config: dict[str, Any]) -> Callable:
        """Training preprocessing at the backbone's size, mean and std (timm's transforms).

        Grey images arrive as 3-channel RGB, so every policy applies unchanged; the colour ops of
        RandAugment/AutoAugment are no-ops on grey, the geometric ones are not.
        """
        if self.augmentation == "none":
            return eval_transform(data_config)
        primary, secondary, final = create_transform(
            input_size=data_config["input_size"],
            is_training=True,
            scale=tuple(self.crop_scale),
            hflip=self.hflip,
            color_jitter=None,
            auto_augment=AUGMENTATIONS[self.augmentation],
            interpolation=data_config["interpolation"],
            mean=data_config["mean"],
            std=data_config["std"],
            re_prob=self.random_erasing,
            separate=True,
        )
        if self.augmentation == "trivialaugment":
            from torchvision.transforms import TrivialAugmentWide

            secondary = TrivialAugmentWide()
        from torchvision.transforms import Compose

        return Compose([primary, secondary, final])

    def batch_train_transform(self, data_config: dict[str, Any]) -> BatchTransform | None:
        """The same crop-and-flip on whole batches on the device, or None for policies that need
        per-image PIL ops (RandAugment, AutoAugment, TrivialAugment, random erasing)."""
        if self.augmentation == "none":
            return batch_eval_transform(data_config)
        if self.augmentation != "basic" or self.random_erasing > 0:
            return None
        return BatchTransform(
            data_config["input_size"],
            data_config["mean"],
            data_config["std"],
            interpolation=data_config["interpolation"],
            crop_scale=self.crop_scale,
            hflip=self.hflip,
        )

    def transforms(self, data_config: dict[str, Any]) -> tuple:
        """(per-image train, per-image eval, batch train or None, batch eval): the data module
        picks per-image or batch preprocessing by where its images live."""
        return (
            self.train_transform(data_config),
            eval_transform(data_config),
            self.batch_train_transform(data_config),
            batch_eval_transform(data_config),
        )

    def mixup(self, num_classes: int) -> Mixup | None:
        """timm's Mixup/CutMix (soft targets, label smoothing folded in), or None when off."""
        if not (self.mixup_alpha or self.cutmix_alpha):
            return None
        return Mixup(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            label_smoothing=self.label_smoothing,
            num_classes=num_classes,
        )

    # --- loss and penalties -------------------------------------------------------------------
    def criterion(self, class_weights: torch.Tensor | None = None) -> nn.Module:
        """Cross-entropy, class-weighted when given weights (torch's takes them with soft targets
        too: then it is timm's SoftTargetCrossEntropy with a weight per class)."""
        if class_weights is not None:
            smoothing = 0.0 if self.mixup_alpha or self.cutmix_alpha else self.label_smoothing
            return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=smoothing)
        if self.mixup_alpha or self.cutmix_alpha:
            return SoftTargetCrossEntropy()  # the targets already carry the smoothing
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    @property
    def needs_pretrained_weights(self) -> bool:
        return self.l2sp_alpha > 0

    @property
    def trains_by_gradient(self) -> bool:
        """Knobs that act only inside gradient training of the backbone."""
        return bool(self.mixup_alpha or self.cutmix_alpha or self.l2sp_alpha or self.bss_eta)

    def bind(self, model: nn.Module, pretrained: bool) -> None:
        """Snapshot w0 for L2-SP; refuse L2-SP without pretrained weights to pull towards."""
        if self.l2sp_alpha or self.l2sp_beta:
            if self.needs_pretrained_weights and not pretrained:
                raise ValueError(
                    f"regularisation.l2sp_alpha={self.l2sp_alpha} pulls weights towards the pretrained "
                    "ones, but backbone.pretrained=false (strategy=scratch?). Use regularisation=default "
                    "or none, or a pretrained backbone."
                )
            self.l2sp = L2SP(model, self.l2sp_alpha, self.l2sp_beta)

    def penalties(self, model: nn.Module, features: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Each extra loss term by name (logged separately, summed into the loss)."""
        terms = {}
        if self.l2sp is not None:
            terms["l2sp"] = self.l2sp(model)
        if self.bss_eta and features is not None:
            terms["bss"] = self.bss_eta * batch_spectral_shrinkage(features, self.bss_k)
        return terms

    @property
    def needs_features(self) -> bool:
        return self.bss_eta > 0


def early_stopping(monitor: str, mode: str, patience: int | None):
    """Lightning's EarlyStopping on the run's monitored metric, or None (off) without a patience."""
    if patience is None:
        return None
    from lightning.pytorch.callbacks import EarlyStopping

    return EarlyStopping(monitor=monitor, mode=mode, patience=patience)
