"""Logits of a whole split, and the numbers every post-hoc method compares models by."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.data import TransferDataModule


@torch.no_grad()  # not inference_mode: the logits feed autograd (temperature fitting)
def split_logits(
    model: nn.Module, datamodule: TransferDataModule, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of every image of the split, in order, with the evaluation transform."""
    device = next(model.parameters()).device
    rows, labels = [], []
    for images, targets in datamodule.eval_batches(split, device):
        rows.append(model(images).float().cpu())
        labels.append(targets.cpu())
    return torch.cat(rows), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (cross-entropy), what temperature scaling
    minimises."""
    return float(F.cross_entropy(logits, labels))


def ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error, 15 equal-width bins: the training's val/ece and test/ece."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = logits.softmax(1)
    return float(multiclass_calibration_error(probs, labels, logits.shape[1], n_bins=15))
