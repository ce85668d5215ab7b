"""Strategies decide what trains, when, and at which rate (conf/strategy/*.yaml, one class each).

Every named parameter group (stem, stage1, ..., head) exists from the moment the optimizer is built;
freezing and unfreezing only flip `requires_grad` and scale the group's LR, both pure functions of
the epoch. The optimizer's groups never change, so LR schedulers keep working, and a resumed run
re-applies exactly the state of its epoch (Lightning's BackboneFinetuning re-freezes on resume).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn

from src.strategies.groups import (
    HEAD,
    layer_decay_groups,
    split_weight_decay,
    stage_groups,
    stage_of,
)

__all__ = [
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
]

log = logging.getLogger(__name__)
BN_POLICIES = ("train", "freeze_stats", "frozen")


class Strategy:
    """Base: every group trains at the optimizer's lr.

    bn: `train` (BatchNorm learns where its stage trains; a frozen stage keeps its statistics),
    `freeze_stats` (running statistics fixed everywhere, affine parameters train with their stage),
    `frozen` (statistics and affine parameters fixed everywhere).
    """

    def __init__(self, bn: str = "train"):
        if bn not in BN_POLICIES:
            raise ValueError(f"strategy.bn='{bn}': choose one of {BN_POLICIES}.")
        self.bn = bn
        self.stage_names: list[str] = []  # backbone groups, input side first; set by param_groups

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

    def fit(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str | None = None,
    ) -> None:
        """ckpt_path: resume from it (weights, optimizer, LR schedule, epoch, RNG)."""
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    def test(
        self, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule
    ) -> dict:
        """Test metrics of the best checkpoint (the last weights when nothing was checkpointed)."""
        checkpoint = trainer.checkpoint_callback
        best = "best" if checkpoint is not None and checkpoint.best_model_path else None
        return trainer.test(module, datamodule=datamodule, ckpt_path=best)[0]

    # --- shared machinery ---------------------------------------------------------------------
    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = stage_groups(model)
        self.stage_names = [name for name, _ in groups if name != HEAD]
        return [g for n, p in groups for g in split_weight_decay(n, p, self.lr_scale(n))]

    def stage_index(self, k: int) -> int:
        """A stage count or index; negative counts from the top (-1: the last stage)."""
        n = len(self.stage_names)
        index = k + n if k < 0 else k
        if not 0 <= index <= n:
            raise ValueError(
                f"stage {k} out of range for a backbone with {n} stages ({self.stage_names})."
            )
        return index

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


class Finetune(Strategy):
    """Everything trainable; the pretrained backbone at backbone_lr_mult x the head's lr."""

    def __init__(self, backbone_lr_mult: float = 1.0, bn: str = "train"):
        super().__init__(bn)
        if backbone_lr_mult <= 0:
            raise ValueError(f"strategy.backbone_lr_mult={backbone_lr_mult}: must be > 0.")
        self.backbone_lr_mult = backbone_lr_mult

    def lr_scale(self, group: str) -> float:
        return 1.0 if group == HEAD else self.backbone_lr_mult


class Scratch(Finetune):
    """Random initialisation (its config sets backbone.pretrained=false), everything at one lr."""

    def __init__(self, bn: str = "train"):
        super().__init__(backbone_lr_mult=1.0, bn=bn)


class LinearProbe(Strategy):
    """Frozen backbone (no gradients, no backward pass through it, BatchNorm in eval); head trains."""

    def trainable(self, group: str, epoch: int) -> bool:
        return group == HEAD


class Partial(Finetune):
    """The first `freeze_stages` backbone groups (stem first) frozen; negative counts from the top,
    so -1 freezes all but the last stage."""

    def __init__(self, freeze_stages: int, backbone_lr_mult: float = 1.0, bn: str = "train"):
        super().__init__(backbone_lr_mult, bn)
        self.freeze_stages = freeze_stages

    def trainable(self, group: str, epoch: int) -> bool:
        if group == HEAD:
            return True
        return self.stage_names.index(group) >= self.stage_index(self.freeze_stages)


class Surgical(Strategy):
    """Only backbone group `block` (0 = stem, -1 = the last stage) and the head train (Lee et al. 2023)."""

    def __init__(self, block: int, bn: str = "train"):
        super().__init__(bn)
        self.block = block

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
    ):
        super().__init__(backbone_lr_mult, bn)
        self.milestones = list(milestones)
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

    def __init__(self, probe_epochs: int, backbone_lr_mult: float = 1.0, bn: str = "train"):
        super().__init__(backbone_lr_mult, bn)
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

    def __init__(self, decay: float = 0.75, min_scale: float = 0.0, bn: str = "train"):
        super().__init__(bn)
        if not 0 < decay <= 1:
            raise ValueError(f"strategy.decay={decay}: valid range (0, 1].")
        self.decay, self.min_scale = decay, min_scale

    def param_groups(self, model: nn.Module) -> list[dict]:
        super().param_groups(model)  # records stage names
        return layer_decay_groups(model, self.decay, self.min_scale)


class FeatureExtract(Strategy):
    """Frozen features into a new classifier: the backbone runs once per split, its pooled features
    are cached on disk (src/strategies/features.py), and `classifier` trains on them:
    `logistic`, `linear_svm`, `svm` (RBF) from scikit-learn, or `linear` (a torch layer trained by
    Lightning with the run's optimizer, schedule and epochs). Training images are not augmented."""

    CLASSIFIERS = ("logistic", "linear_svm", "svm", "linear")

    def __init__(
        self,
        classifier: str = "logistic",
        C: float = 1.0,
        max_iter: int = 2000,
        cache_dir: str = "cache/features",
        bn: str = "train",
    ):
        super().__init__(bn)
        if classifier not in self.CLASSIFIERS:
            raise ValueError(
                f"strategy.classifier='{classifier}': choose one of {self.CLASSIFIERS}."
            )
        if C <= 0:
            raise ValueError(f"strategy.C={C}: must be > 0.")
        self.classifier, self.C, self.max_iter, self.cache_dir = classifier, C, max_iter, cache_dir
        self.head_module: L.LightningModule | None = None
        self.features = None

    def trainable(self, group: str, epoch: int) -> bool:
        return group == HEAD

    def check(self, max_epochs: int, regularisation=None) -> None:
        if regularisation is not None and regularisation.trains_by_gradient:
            raise ValueError(
                "strategy=feature_extract trains a classifier on cached, frozen features: mixup/cutmix, "
                "L2-SP and BSS cannot act there. Use regularisation=none, light or default, or a "
                "fine-tuning strategy."
            )

    def fit(self, trainer, module, datamodule, ckpt_path: str | None = None) -> None:
        # Cached features make a rerun cheap: a resumed feature_extract job simply runs again.
        from src.strategies.features import FeatureDataModule

        features, stats = self._features(trainer, module, datamodule, ("train", "val"))
        balanced = datamodule.sampler == "balanced"
        self.features = FeatureDataModule(
            features, datamodule.batch_size, datamodule.seed, balanced=balanced
        )
        head = self._head(module, datamodule, *features["train"])
        from src.strategies.heads import is_probabilistic

        task = copy.deepcopy(module.task)  # its own metrics and thresholds
        if not is_probabilistic(self.classifier):
            task.for_margins()  # SVM margins: no loss, no calibration error
        self.head_module = type(module)(
            head,
            Strategy(),
            module.optimizer_factory,
            module.scheduler_factory,
            module.regularisation,
            module.class_names,
            task,
        )
        if self.classifier == "linear":
            trainer.fit(self.head_module, datamodule=self.features)
            self._load_best_head(trainer)
        else:  # nothing to train by gradient: score the fitted classifier on val like an epoch end
            trainer.validate(self.head_module, datamodule=self.features)
        self._ship(trainer, module)

    def _head(self, module, datamodule, features, labels) -> nn.Module:
        """The classifier on features: a torch layer to train, or scikit-learn's fitted one as
        its exact torch equivalent (src/strategies/heads.py)."""
        from src.strategies.features import LinearHead, sklearn_classifier
        from src.strategies.heads import KernelSVM, affine, install_linear

        num_features, num_classes = features.shape[1], len(module.class_names)
        if self.classifier == "linear":  # the task's loss carries any class weights
            dropout = getattr(module.model, "drop_rate", 0.0)
            return LinearHead(num_features, num_classes, dropout=dropout)
        # scikit-learn's class_weight="balanced" is the same inverse-frequency rule
        weigh = datamodule.sampler == "balanced" or datamodule.class_weights == "auto"
        fitted = sklearn_classifier(
            self.classifier, self.C, self.max_iter, datamodule.seed, weigh, module.task
        )
        fitted.fit(features.numpy(), labels.numpy())
        if self.classifier == "svm":
            return KernelSVM.from_fitted(fitted, num_classes)
        weight, bias = affine(fitted, num_classes)
        head = LinearHead(num_features, num_classes)
        install_linear(head, torch.from_numpy(weight), torch.from_numpy(bias))
        return head

    def _load_best_head(self, trainer) -> None:
        """The head of the best validation epoch, as Strategy.test would test it."""
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            state = torch.load(callback.best_model_path, map_location="cpu", weights_only=True)
            self.head_module.load_state_dict(state["state_dict"])

    def _ship(self, trainer, module) -> None:
        """The run's checkpoints become the whole model: the backbone with this head as its
        classifier, the task's thresholds, the class names, so eval, predict and export load a
        feature_extract run like any other. A linear head rewrites each checkpoint it trained
        (best and last keep their own head); a scikit-learn head writes last.ckpt."""
        from src.strategies.features import LinearHead
        from src.strategies.heads import head_record, install_linear, replace_classifier

        callback = trainer.checkpoint_callback
        if callback is None or not callback.dirpath or not trainer.is_global_zero:
            return
        folder = Path(callback.dirpath)
        folder.mkdir(parents=True, exist_ok=True)
        head = self.head_module.model
        trained_here = {callback.best_model_path, callback.last_model_path} - {""}
        saved = sorted(map(Path, trained_here)) if self.classifier == "linear" else []
        for path in saved or [folder / "last.ckpt"]:
            state = (
                torch.load(path, map_location="cpu", weights_only=True)
                if saved
                else {"state_dict": self.head_module.state_dict(), "epoch": 0, "global_step": 0}
            )
            trained = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
            if isinstance(head, LinearHead):
                install_linear(module.model, trained["fc.weight"], trained["fc.bias"])
            else:
                replace_classifier(module.model, head)
            tasks = {k: v for k, v in state["state_dict"].items() if k.startswith("task.")}
            state["state_dict"] = {
                **{f"model.{k}": v for k, v in module.model.state_dict().items()},
                **tasks,
            }
            state["class_names"] = list(module.class_names)
            state["head"] = head_record(self.classifier, head)
            torch.save(state, path)
        log.info("Checkpoints in %s hold the backbone with its %s head", folder, self.classifier)

    def test(self, trainer, module, datamodule) -> dict:
        assert self.head_module is not None, "fit() first"
        self.features.features.update(self._features(trainer, module, datamodule, ("test",))[0])
        # The head already holds its best epoch; the checkpoints now hold the whole model.
        return trainer.test(self.head_module, datamodule=self.features)[0]

    def _features(self, trainer, module, datamodule, splits: tuple[str, ...]) -> tuple[dict, dict]:
        """Cached features of `splits` (test only when testing), cache statistics logged."""
        from src.strategies.features import cached_features

        device = trainer.strategy.root_device
        features, stats = cached_features(module.model, datamodule, self.cache_dir, device, splits)
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"{key}/{'_'.join(splits)}": value for key, value in stats.items()}, step=0
            )
        return features, stats
