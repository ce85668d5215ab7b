"""Strategies decide what trains, when, and at which rate (conf/strategy/*.yaml, one class each).

Every named parameter group (stem, stage1, ..., head) exists from the moment the optimizer is built;
freezing and unfreezing only flip `requires_grad` and scale the group's LR, both pure functions of
the epoch. The optimizer's groups never change, so LR schedulers keep working, and a resumed run
re-applies exactly the state of its epoch (Lightning's BackboneFinetuning re-freezes on resume).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from src.strategies.adapters import BitFit, LoRA
from src.strategies.base import BN_POLICIES, Strategy
from src.strategies.features import FeatureExtract
from src.strategies.groups import HEAD, layer_decay_groups

__all__ = [
    "BN_POLICIES",
    "Strategy",
    "Finetune",
    "Scratch",
    "LinearProbe",
    "Partial",
    "GradualUnfreeze",
    "LPFT",
    "LayerDecay",
    "Surgical",
    "FeatureExtract",
    "LoRA",
    "BitFit",
]


class Finetune(Strategy):
    """Everything trainable; the pretrained backbone at backbone_lr_mult x the head's lr."""

    def __init__(self, backbone_lr_mult: float = 1.0, bn: str = "train", **options):
        super().__init__(bn, **options)
        if not 0 < backbone_lr_mult < float("inf"):  # NaN fails too
            raise ValueError(f"strategy.backbone_lr_mult={backbone_lr_mult}: a finite number > 0.")
        self.backbone_lr_mult = backbone_lr_mult

    def lr_scale(self, group: str) -> float:
        return 1.0 if group == HEAD else self.backbone_lr_mult


class Scratch(Finetune):
    """Random initialisation (its config sets backbone.pretrained=false), everything at one lr."""

    def __init__(self, bn: str = "train", **options):
        super().__init__(backbone_lr_mult=1.0, bn=bn, **options)


class LinearProbe(Strategy):
    """Frozen backbone (no gradients, no backward pass through it, BatchNorm in eval); head trains."""

    def trainable(self, group: str, epoch: int) -> bool:
        return group == HEAD


class Partial(Finetune):
    """The first `freeze_stages` backbone groups (stem first) frozen; negative counts from the top,
    so -1 freezes all but the last stage."""

    def __init__(
        self, freeze_stages: int, backbone_lr_mult: float = 1.0, bn: str = "train", **options
    ):
        super().__init__(backbone_lr_mult, bn, **options)
        self.freeze_stages = freeze_stages

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        n = len(self.stage_names)
        self._check_stage("freeze_stages", self.freeze_stages, -n, n)

    def trainable(self, group: str, epoch: int) -> bool:
        if group == HEAD:
            return True
        return self.stage_names.index(group) >= self.stage_index(self.freeze_stages)


class Surgical(Strategy):
    """Only backbone group `block` (0 = stem, -1 = the last stage) and the head train (Lee et al. 2023)."""

    def __init__(self, block: int, bn: str = "train", **options):
        super().__init__(bn, **options)
        self.block = block

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        n = len(self.stage_names)
        self._check_stage("block", self.block, -n, n - 1)

    def trainable(self, group: str, epoch: int) -> bool:
        return group == HEAD or self.stage_names.index(group) == self.stage_index(self.block)


class GradualUnfreeze(Finetune):
    """Head first; at each milestone epoch the next stage from the top unfreezes (ULMFiT).

    A stage unfrozen at epoch m starts at start_lr_fraction of its lr and ramps linearly to its
    full lr over ramp_epochs. Stages below the last milestone's stay frozen.
    """

    changes_trainable = True

    def __init__(
        self,
        milestones: Sequence[int],
        start_lr_fraction: float = 0.1,
        ramp_epochs: float = 1.0,
        backbone_lr_mult: float = 1.0,
        bn: str = "train",
        **options,
    ):
        super().__init__(backbone_lr_mult, bn, **options)
        self.milestones = list(milestones)
        if not self.milestones:
            raise ValueError(
                "strategy.milestones=[]: the backbone would never unfreeze (a linear probe "
                "recorded as gradual_unfreeze). Give at least one epoch, or use strategy=linear_probe."
            )
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(set(self.milestones)):
            raise ValueError(
                f"strategy.milestones={self.milestones}: strictly increasing epochs >= 1."
            )
        if not 0 < start_lr_fraction <= 1:
            raise ValueError(f"strategy.start_lr_fraction={start_lr_fraction}: valid range (0, 1].")
        self.start_lr_fraction, self.ramp_epochs = start_lr_fraction, ramp_epochs

    def check(self, max_epochs: int, regularisation=None) -> None:
        late = [m for m in self.milestones if m >= max_epochs]
        if late:
            raise ValueError(
                f"strategy.milestones {late} are not before trainer.max_epochs={max_epochs}; "
                f"valid range [1, {max_epochs - 1}]."
            )

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        n = len(self.stage_names)
        if len(self.milestones) > n:
            raise ValueError(
                f"strategy.milestones={self.milestones}: the backbone has {n} stages, so at most "
                f"{n} milestones can unfreeze one; the last {len(self.milestones) - n} do nothing."
            )

    def unfreeze_epoch(self, group: str) -> float:
        """The epoch `group` starts training (inf: never)."""
        if group == HEAD:
            return 0
        from_top = len(self.stage_names) - 1 - self.stage_names.index(group)
        return self.milestones[from_top] if from_top < len(self.milestones) else float("inf")

    def trainable(self, group: str, epoch: int) -> bool:
        return epoch >= self.unfreeze_epoch(group)

    def lr_factor(self, group: str, epoch: float) -> float:
        start = self.unfreeze_epoch(group)
        if epoch < start:
            return 0.0
        if group == HEAD or self.ramp_epochs <= 0:
            return 1.0
        progress = min(1.0, (epoch - start) / self.ramp_epochs)
        return self.start_lr_fraction + (1 - self.start_lr_fraction) * progress


class LPFT(Finetune):
    """Linear probe for probe_epochs, then everything trains (Kumar et al. 2022)."""

    changes_trainable = True

    def __init__(
        self, probe_epochs: int, backbone_lr_mult: float = 1.0, bn: str = "train", **options
    ):
        super().__init__(backbone_lr_mult, bn, **options)
        if probe_epochs < 1:
            raise ValueError(f"strategy.probe_epochs={probe_epochs}: must be >= 1.")
        self.probe_epochs = probe_epochs

    def check(self, max_epochs: int, regularisation=None) -> None:
        if self.probe_epochs >= max_epochs:
            raise ValueError(
                f"strategy.probe_epochs={self.probe_epochs} leaves no fine-tuning epoch within "
                f"trainer.max_epochs={max_epochs}; valid range [1, {max_epochs - 1}]."
            )

    def trainable(self, group: str, epoch: int) -> bool:
        return group == HEAD or epoch >= self.probe_epochs


class LayerDecay(Strategy):
    """Layer-wise lr decay: lr x decay^(depth from the head), timm's per-block groups; norms and
    biases get no weight decay."""

    def __init__(self, decay: float = 0.75, min_scale: float = 0.0, bn: str = "train", **options):
        super().__init__(bn, **options)
        if not 0 < decay <= 1:
            raise ValueError(f"strategy.decay={decay}: valid range (0, 1].")
        self.decay, self.min_scale = decay, min_scale

    def param_groups(self, model: nn.Module) -> list[dict]:
        super().param_groups(model)  # records stage names
        return layer_decay_groups(model, self.decay, self.min_scale)
