"""Where a model fails on a split: each image's outputs, loss and features in one pass, then the
most confused class pairs, per-class accuracy with a Wilson 95 % interval and the top losses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.errors import InvalidInput


@dataclass
class Outputs:
    """One row per image of the split, in the split's order."""

    scores: np.ndarray  # [N, C] the model's outputs (logits; an SVM's margins)
    labels: np.ndarray  # [N] class indices, or [N, C] 0/1 rows (multi-label)
    features: np.ndarray  # [N, D] pre-logits features (what the head sees)
    losses: np.ndarray  # [N] see image_losses

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def predictions(self) -> np.ndarray:
        """Class index (single-label) or 0/1 rows at logit 0 (multi-label: probability 0.5)."""
        return (self.scores > 0).astype(int) if self.multilabel else self.scores.argmax(1)

    @property
    def correct(self) -> np.ndarray:
        if self.multilabel:
            return (self.predictions == self.labels).all(1)
        return self.predictions == self.labels


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k={k}: an integer >= 1 (images per gallery and per class).")
    return k


def image_losses(scores: torch.Tensor, labels: torch.Tensor, probabilistic: bool) -> torch.Tensor:
    """Per image: cross-entropy; multi-label: the labels' summed binary cross-entropy; an SVM
    head (no probabilities): the best other class's margin minus the true class's."""
    if labels.ndim == 2:
        return F.binary_cross_entropy_with_logits(scores, labels.float(), reduction="none").sum(1)
    if probabilistic:
        return F.cross_entropy(scores, labels, reduction="none")
    true = scores.gather(1, labels[:, None])[:, 0]
    others = scores.scatter(1, labels[:, None], float("-inf"))
    return others.max(1).values - true


@torch.no_grad()
def collect(model: nn.Module, batches, probabilistic: bool = True) -> Outputs:
    """Scores, labels, features and losses of every (images, labels) batch."""
    rows: dict[str, list] = {"scores": [], "labels": [], "features": [], "losses": []}
    for images, labels in batches:
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        scores = model.get_classifier()(features) if _head_is_separate(model) else model(images)
        labels = labels.to(scores.device)
        rows["losses"].append(image_losses(scores.float(), labels, probabilistic).cpu())
        rows["scores"].append(scores.float().cpu())
        rows["labels"].append(labels.cpu())
        rows["features"].append(features.flatten(1).float().cpu())
    return Outputs(**{key: torch.cat(value).numpy() for key, value in rows.items()})


def _head_is_separate(model: nn.Module) -> bool:
    """A classifier that maps pre-logits features to scores on its own (timm's usual layout):
    then one forward pass gives both; otherwise (an unusual head) the model runs again."""
    head = model.get_classifier()
    return isinstance(head, nn.Module) and not isinstance(head, nn.Identity)


def top_losses(outputs: Outputs, k: int) -> np.ndarray:
    """Indices of the k highest-loss images, highest first (ties: the earlier image)."""
    return np.argsort(-outputs.losses, kind="stable")[:k]


def confused_pairs(outputs: Outputs, names: list[str], top: int = 10) -> list[dict]:
    """(true, predicted) pairs of different classes, most frequent first, with the count and its
    share of the true class's images. Single-label only."""
    if outputs.multilabel:
        return []
    n = len(names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (outputs.labels, outputs.predictions), 1)
    np.fill_diagonal(matrix, 0)
    support = np.bincount(outputs.labels, minlength=n)
    pairs = sorted(zip(*np.nonzero(matrix), strict=True), key=lambda p: (-matrix[p], p))
    return [
        {
            "true": names[t],
            "predicted": names[p],
            "count": int(matrix[t, p]),
            "share": float(matrix[t, p] / support[t]),
        }
        for t, p in pairs[:top]
    ]


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (scipy's binomtest)."""
    from scipy.stats import binomtest

    if trials == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


def per_class_accuracy(outputs: Outputs, names: list[str]) -> list[dict]:
    """Per class: images, accuracy (multi-label: that label's 0/1 decision) and its 95 % CI."""
    rows = []
    for index, name in enumerate(names):
        if outputs.multilabel:
            right = outputs.predictions[:, index] == outputs.labels[:, index]
        else:
            right = outputs.predictions[outputs.labels == index] == index
        low, high = wilson(int(right.sum()), len(right))
        accuracy = float(right.mean()) if len(right) else float("nan")
        rows.append(
            {
                "class": name,
                "images": len(right),
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return rows
