"""Regularisation: one object per preset (conf/regularisation/*.yaml).

head_dropout and drop_path_rate reach the backbone (timm's drop_rate / drop_path_rate) and
weight_decay the optimizer through config interpolation; this object owns the data augmentation
and the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from timm.data import create_transform
from torch import nn

AUGMENTATIONS = ("none", "basic")


@dataclass
class Regularisation:
    head_dropout: float = 0.0
    drop_path_rate: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augmentation: str = "none"
    crop_scale: Sequence[float] = (0.6, 1.0)
    hflip: float = 0.5

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"regularisation.augmentation='{self.augmentation}': choose one of {AUGMENTATIONS}."
            )
        for key in ("head_dropout", "drop_path_rate", "label_smoothing", "hflip"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"regularisation.{key}={getattr(self, key)}: valid range [0, 1).")
        if self.weight_decay < 0:
            raise ValueError(f"regularisation.weight_decay={self.weight_decay}: must be >= 0.")

    def train_transform(self, data_config: dict[str, Any]) -> Callable:
        """Training preprocessing at the backbone's size, mean and std (timm's transforms)."""
        if self.augmentation == "none":
            return eval_transform(data_config)
        return create_transform(
            input_size=data_config["input_size"],
            is_training=True,
            scale=tuple(self.crop_scale),
            hflip=self.hflip,
            color_jitter=None,
            interpolation=data_config["interpolation"],
            mean=data_config["mean"],
            std=data_config["std"],
        )

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """Resize + centre crop (crop_pct) + normalise, exactly as the backbone expects."""
    return create_transform(**data_config, is_training=False)
