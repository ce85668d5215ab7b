"""The base Strategy: every group trains at the optimizer's lr; subclasses say what trains when."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from src.strategies.groups import (
    HEAD,
    no_weight_decay_ids,
    split_weight_decay,
    stage_groups,
    stage_of,
)

BN_POLICIES = ("train", "freeze_stats", "frozen")


class Strategy:
    """Base: every group trains at the optimizer's lr.

    bn: `train` (BatchNorm learns where its stage trains; a frozen stage keeps its statistics),
    `freeze_stats` (running statistics fixed everywhere, affine parameters train with their stage),
    `frozen` (statistics and affine parameters fixed everywhere).
    """

    def __init__(
        self, bn: str = "train", cache_prefix: bool | str = "auto", prefix_cache_dir: str = "cache"
    ):
        """cache_prefix: auto | true | false, compute the backbone layers frozen for the whole run
        once per image, cached in prefix_cache_dir (src/strategies/prefix.py, src/caching/prefix.py)."""
        from src.strategies.prefix import check_mode

        if bn not in BN_POLICIES:
            raise ValueError(f"strategy.bn='{bn}': choose one of {BN_POLICIES}.")
        check_mode(cache_prefix)
        self.bn, self.cache_prefix, self.prefix_cache_dir = bn, cache_prefix, prefix_cache_dir
        self.stage_names: list[str] = []  # backbone groups, input side first; set by param_groups

    # How a run with this strategy computes, by import path (src/pipelines; a strategy never
    # imports the computation): the model on images, its frozen prefix cached where exact.
    pipeline = "src.pipelines.ImagePipeline"

    # Whether `trainable` depends on the epoch: DDP must then track every parameter (see
    # src/models/distributed.py); otherwise the model is frozen before DDP wraps it.
    changes_trainable = False

    # --- what subclasses override -------------------------------------------------------------
    def trainable(self, group: str, epoch: int) -> bool:
        return True

    def lr_scale(self, group: str) -> float:
        """Constant multiplier of the optimizer's lr for this group."""
        return 1.0

    def lr_factor(self, group: str, epoch: float) -> float:
        """Time-varying multiplier (epoch is fractional): 0 while the group is frozen."""
        return 1.0 if self.trainable(group, int(epoch)) else 0.0

    def check(self, max_epochs: int, regularisation=None) -> None:
        """Refuse a schedule that cannot happen within max_epochs, or a regulariser that cannot act."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Change what a checkpoint holds (LoRA: its adapters merged into the weights)."""

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Undo on_save_checkpoint's change before the module loads the checkpoint."""

    def check_model(self, model: nn.Module) -> None:
        """Refuse stage settings this backbone cannot have (its stages come from timm), before
        any run exists; subclasses check their own keys."""
        self.stage_names = [name for name, _ in stage_groups(model) if name != HEAD]

    def _check_stage(self, key: str, k: int, low: int, high: int) -> None:
        if not low <= k <= high:
            raise ValueError(
                f"strategy.{key}={k}: the backbone has {len(self.stage_names)} stages "
                f"({', '.join(self.stage_names)}); valid range [{low}, {high}]."
            )

    # --- shared machinery ---------------------------------------------------------------------
    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = stage_groups(model)
        self.stage_names = [name for name, _ in groups if name != HEAD]
        no_decay = no_weight_decay_ids(model)
        return [g for n, p in groups for g in split_weight_decay(n, p, self.lr_scale(n), no_decay)]

    def stage_index(self, k: int) -> int:
        """A stage count or index; negative counts from the top (-1: the last stage)."""
        n = len(self.stage_names)
        index = k + n if k < 0 else k
        if not 0 <= index <= n:
            raise ValueError(
                f"stage {k} out of range for a backbone with {n} stages ({self.stage_names})."
            )
        return index

    def trained_parameters(self, model: nn.Module) -> dict[str, int]:
        """Parameter counts worth logging (LoRA, BitFit: how few train); none by default."""
        return {}

    def apply(self, model: nn.Module, groups: Sequence[dict], epoch: int) -> None:
        """Set requires_grad and BatchNorm modes for `epoch`; called at every train epoch start."""
        bn_param_ids = {
            id(p)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)
        }
        for group in groups:
            trains = self.trainable(stage_of(group["name"]), epoch)
            for param in group["params"]:
                param.requires_grad_(
                    trains and not (self.bn == "frozen" and id(param) in bn_param_ids)
                )
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                frozen_layer = bool(params) and not any(p.requires_grad for p in params)
                # Both ways: a stage unfrozen this epoch must learn its statistics again.
                module.train(self.bn == "train" and not frozen_layer)
