"""What the labels are: one class per image (softmax, cross-entropy) or several (sigmoid, BCE).

A task owns its loss, its metrics and their names, so the LightningModule trains and logs either
without asking which it has. Both are nn.Modules: their buffers (class weights, the multi-label
decision thresholds chosen on validation) travel in every checkpoint, so the best checkpoint is
tested with the thresholds of its own validation epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    multilabel_auroc,
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision_recall_curve,
)
from torchmetrics.utilities import dim_zero_cat

from src.models.metrics import metric_key, per_class_metrics, scalar_metrics

STAGES = ("val", "test")
# Scalars a multi-label run logs per stage (its monitor must be one of them, or the loss).
MULTILABEL_METRICS = ("auroc", "ap", "f1_macro", "loss")


class SingleLabel(nn.Module):
    """Softmax over classes, cross-entropy (class-weighted with class_weights)."""

    multilabel = False
    probabilistic = True  # scores are logits: the loss and calibration error mean something

    def __init__(self, class_names: list[str], class_weights: torch.Tensor | None = None):
        super().__init__()
        self.class_names, n = class_names, len(class_names)
        self.register_buffer("class_weights", class_weights)
        self.train_acc = scalar_metrics(n, "train/")["acc"]
        self.scalars = nn.ModuleDict({s: scalar_metrics(n, f"{s}/") for s in STAGES})
        self.per_class = nn.ModuleDict({s: per_class_metrics(n) for s in STAGES})
        self.confusion: dict[str, torch.Tensor] = {}  # stage -> last epoch's matrix, for plots

    def check(self, regularisation, monitor: str) -> None:
        """Every regulariser works with one label per image; the monitor must be logged."""
        check_class_keys(self.class_names)
        per_class = [f"val/acc_class/{metric_key(name)}" for name in self.class_names]
        logged = [*self.scalars["val"].keys(), "val/loss", "train/loss_epoch", "train/acc"]
        check_monitored(monitor, logged, per_class, "single-label")

    def treat_scores_as_margins(self) -> None:
        """Scores that are not logits (SVM margins): no loss and no calibration error logged."""
        self.probabilistic = False
        n = len(self.class_names)
        self.scalars = nn.ModuleDict({s: scalar_metrics(n, f"{s}/", False) for s in STAGES})

    def criterion(self, regularisation) -> nn.Module:
        """The training loss: label smoothing and mixup's soft targets from the regulariser."""
        return regularisation.criterion(self.class_weights)

    def mixup(self, regularisation):
        return regularisation.mixup(len(self.class_names))

    def eval_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """val/test loss: hard labels, no smoothing, no class weights (comparable across runs)."""
        return F.cross_entropy(logits, labels)

    def train_step(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        self.train_acc.update(logits, labels)  # epoch value only: no per-step compute
        return {"train/acc": self.train_acc}

    def eval_step(self, stage: str, logits: torch.Tensor, labels: torch.Tensor):
        """Updates this step's metrics; returns what to log_dict (Lightning computes at epoch end)."""
        self.scalars[stage].update(logits, labels)
        self.per_class[stage].update(logits, labels)
        return self.scalars[stage]

    def epoch_end(self, stage: str, sanity_checking: bool) -> dict[str, torch.Tensor]:
        """Per-class values by class name (recall = acc_class, F1, one-vs-rest AUROC)."""
        values = self.per_class[stage].compute()
        self.per_class[stage].reset()
        if sanity_checking:
            return {}
        self.confusion[stage] = values.pop("confusion").cpu()
        return {
            f"{stage}/{kind.removesuffix('_per_class')}_class/{metric_key(name)}": value
            for kind, per_class in values.items()
            for name, value in zip(self.class_names, per_class, strict=True)
        }


def check_class_keys(class_names: list[str]) -> None:
    """Per-class metrics are named by class: two names that make one MLflow key would overwrite
    each other's values without a word."""
    seen: dict[str, str] = {}
    for name in class_names:
        key = metric_key(name)
        if key in seen:
            raise ValueError(
                f"classes '{seen[key]}' and '{name}' would both log as val/acc_class/{key}: "
                "rename one (class folder names may use letters, digits, '_', '-' and '.')."
            )
        seen[key] = name


def check_monitored(monitor: str, logged: list[str], per_class: list[str], kind: str) -> None:
    """Refuse a monitor that is never logged: otherwise it fails only after the first epoch."""
    if monitor in logged or monitor in per_class:
        return
    more = f" or a class's val/acc_class/<class> ({len(per_class)} classes)" if per_class else ""
    raise ValueError(
        f"monitor.metric={monitor} is not logged for a {kind} data set: choose one of {logged}{more} "
        "(monitor.mode=min for a loss or val/ece, max otherwise)."
    )


class MultiLabel(nn.Module):
    """One sigmoid per label, binary cross-entropy (pos_weight per label with class_weights).

    Metrics (torchmetrics, macro over labels that have both positives and negatives, and per
    label): AUROC, average precision, and F1 at per-label thresholds. After every validation epoch
    each label's threshold is set where its validation F1 is highest; test F1 uses those."""

    multilabel = True
    probabilistic = True

    def __init__(self, class_names: list[str], pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.class_names = class_names
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("thresholds", torch.full((len(class_names),), 0.5))
        self.collected = nn.ModuleDict({s: Collected() for s in STAGES})
        self.confusion: dict[str, torch.Tensor] = {}  # no single confusion matrix

    def check(self, regularisation, monitor: str) -> None:
        if regularisation.mixup_alpha or regularisation.cutmix_alpha:
            raise ValueError(
                "regularisation mixup/cutmix (timm's Mixup) makes one-hot targets and cannot mix "
                "multi-label ones: set regularisation.mixup_alpha=0 regularisation.cutmix_alpha=0, "
                "or use regularisation=default, light, none or l2sp."
            )
        check_class_keys(self.class_names)
        logged = [f"val/{name}" for name in MULTILABEL_METRICS] + ["train/loss_epoch"]
        check_monitored(monitor, logged, [], "multi-label")

    def treat_scores_as_margins(self) -> None:
        """SVM margins: ranks (AUROC, AP) and thresholds hold, a loss would not."""
        self.probabilistic = False

    def criterion(self, regularisation) -> nn.Module:
        return SmoothedBCE(regularisation.label_smoothing, self.pos_weight)

    def mixup(self, regularisation):
        return None  # refused in check()

    def eval_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.float())

    def train_step(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        return {}  # AUROC needs every prediction of the epoch: not worth it on train

    def eval_step(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        self.collected[stage].update(logits, labels)
        return {}

    def epoch_end(self, stage: str, sanity_checking: bool) -> dict[str, torch.Tensor]:
        logits, target = self.collected[stage].compute()
        self.collected[stage].reset()
        if sanity_checking:
            return {}
        probs = logits.sigmoid()
        logged = {}
        if stage == "val":
            self.thresholds.copy_(best_f1_thresholds(probs, target))
            logged = self._per_label("val/threshold", self.thresholds)
        scores = multilabel_scores(probs, target, self.thresholds)
        present = has_both_classes(target)
        for kind, per_label in scores.items():
            logged[f"{stage}/{kind}"] = per_label[present].mean()
            logged.update(self._per_label(f"{stage}/{kind}_class", per_label))
        logged[f"{stage}/f1_macro"] = logged.pop(f"{stage}/f1")
        return logged

    def _per_label(self, prefix: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}/{metric_key(name)}": value
            for name, value in zip(self.class_names, values, strict=True)
        }


class SmoothedBCE(nn.Module):
    """BCE with logits; label smoothing eps moves each 0/1 target to eps/2 and 1 - eps/2 (the
    binary form of the multi-class rule: eps spread evenly over both outcomes)."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float() * (1 - self.smoothing) + self.smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


class Collected(Metric):
    """Every (logits, labels) of an epoch, gathered across processes, for metrics that need them
    all at once (AUROC, AP, threshold search)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.labels.append(labels.int())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.logits), dim_zero_cat(self.labels)


def has_both_classes(target: torch.Tensor) -> torch.Tensor:
    """Labels with positives and negatives: the only ones whose AUROC/AP mean anything."""
    positives = target.sum(0)
    return (positives > 0) & (positives < len(target))


def multilabel_scores(
    probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-label AUROC, average precision and F1 at the given per-label thresholds."""
    num_labels = target.shape[1]
    decided = (probs >= thresholds).int()  # integer preds: torchmetrics takes them as decisions
    return {
        "auroc": multilabel_auroc(probs, target, num_labels, average=None),
        "ap": multilabel_average_precision(probs, target, num_labels, average=None),
        "f1": multilabel_f1_score(decided, target, num_labels, average=None, zero_division=0),
    }


def best_f1_thresholds(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per label, the probability threshold with the highest F1 (0.5 for a label without
    positives, where every threshold scores 0)."""
    precision, recall, thresholds = multilabel_precision_recall_curve(
        probs, target, target.shape[1]
    )
    chosen = torch.full((target.shape[1],), 0.5, device=probs.device)
    for label, (p, r, t) in enumerate(zip(precision, recall, thresholds, strict=True)):
        if target[:, label].sum() == 0:
            continue
        f1 = 2 * p[:-1] * r[:-1] / (p[:-1] + r[:-1]).clamp(min=1e-12)  # last point: no threshold
        chosen[label] = t[f1.argmax()]
    return chosen


def task_for(
    class_names: list[str], multilabel: bool, weights: torch.Tensor | None
) -> SingleLabel | MultiLabel:
    """The task a data set's labels call for; weights: class weights or per-label pos_weight."""
    return (MultiLabel if multilabel else SingleLabel)(class_names, weights)
