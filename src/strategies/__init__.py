"""Strategies decide what trains and at which rate (conf/strategy/*.yaml, one class each).

A strategy never builds the optimizer: it returns *named* parameter groups with an `lr_scale`
relative to the optimizer's lr, which the LightningModule multiplies in.
"""

from __future__ import annotations

from torch import nn

__all__ = ["Strategy", "Finetune", "LinearProbe", "split_head"]


def split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters, the head being timm's `get_classifier()` (the new layer)."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    return backbone, head


class Strategy:
    """Base: everything trainable at the optimizer's lr."""

    def setup(self, model: nn.Module) -> None:
        """Called once, before the optimizer exists: set requires_grad."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        backbone, head = split_head(model)
        return [
            {"name": "backbone", "params": backbone, "lr_scale": 1.0},
            {"name": "head", "params": head, "lr_scale": 1.0},
        ]

    def on_train_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called every epoch after Lightning puts the model in train mode."""
        freeze_norm_statistics(model)


def freeze_norm_statistics(model: nn.Module) -> None:
    """A norm layer whose parameters are all frozen runs in eval mode: its running statistics stay
    the pretrained ones, and the frozen layer computes exactly what it did before training."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


class Finetune(Strategy):
    """Everything trainable; the pretrained backbone at backbone_lr_mult x the head's lr."""

    def __init__(self, backbone_lr_mult: float = 1.0):
        if backbone_lr_mult <= 0:
            raise ValueError(f"strategy.backbone_lr_mult={backbone_lr_mult}: must be > 0.")
        self.backbone_lr_mult = backbone_lr_mult

    def setup(self, model: nn.Module) -> None:
        model.requires_grad_(True)

    def param_groups(self, model: nn.Module) -> list[dict]:
        backbone, head = split_head(model)
        return [
            {"name": "backbone", "params": backbone, "lr_scale": self.backbone_lr_mult},
            {"name": "head", "params": head, "lr_scale": 1.0},
        ]


class LinearProbe(Strategy):
    """Frozen backbone (no gradients, no backward pass through it, BatchNorm in eval); head trains."""

    def setup(self, model: nn.Module) -> None:
        backbone, head = split_head(model)
        for param in backbone:
            param.requires_grad_(False)
        for param in head:
            param.requires_grad_(True)

    def param_groups(self, model: nn.Module) -> list[dict]:
        _, head = split_head(model)
        return [{"name": "head", "params": head, "lr_scale": 1.0}]
