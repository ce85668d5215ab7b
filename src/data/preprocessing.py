"""Evaluation preprocessing, exactly as the backbone expects (timm's data config): what validation,
test, feature extraction, similarity, eval and predict all feed a model. Training augmentation is
src/regularisation's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.data import create_transform

from src.data.batch_transforms import BatchTransform


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """Resize + centre crop (crop_pct) + normalise, exactly as the backbone expects."""
    return create_transform(**data_config, is_training=False)


def batch_eval_transform(data_config: dict[str, Any]) -> BatchTransform:
    """eval_transform's resize + centre crop + normalise, on uint8 batches."""
    return BatchTransform(
        data_config["input_size"],
        data_config["mean"],
        data_config["std"],
        interpolation=data_config["interpolation"],
        crop_pct=data_config["crop_pct"],
    )
