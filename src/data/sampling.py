"""Training order and class imbalance: the seeded per-epoch shuffle, a class-balanced sampler and
inverse-frequency loss weights. Balance is measured on the training split only (validation and test
keep their natural class mix, so their metrics stay comparable with an unweighted run)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

CLASS_WEIGHTS = (None, "auto")
SAMPLERS = ("shuffle", "balanced")


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class (single-label [N]) or positives per label (multi-label [N, L])."""
    if targets.ndim == 2:
        return targets.sum(axis=0).astype(np.int64)
    return np.bincount(targets, minlength=num_classes)


def inverse_frequency(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Loss weights that give every class the same total weight.

    Single-label: w_c = N / (C * n_c) (scikit-learn's "balanced"), the CrossEntropyLoss weight.
    Multi-label: n_neg / n_pos per label, BCEWithLogitsLoss's pos_weight, so positives and negatives
    of each label weigh the same. A class absent from the training split gets weight 1 (nothing to
    weigh, and an infinite weight would only turn the loss into NaN)."""
    counts = class_counts(targets, num_classes).astype(np.float64)
    if targets.ndim == 2:
        weights = (len(targets) - counts) / np.maximum(counts, 1)
    else:
        weights = len(targets) / (num_classes * np.maximum(counts, 1))
    weights[counts == 0] = 1.0
    return torch.tensor(weights, dtype=torch.float32)


class BalancedSampler(WeightedRandomSampler):
    """Draws len(labels) training images per epoch with replacement, each class equally likely
    (weight 1 / n_class per image). The draw depends only on (seed, epoch): Lightning calls
    set_epoch, so a resumed run sees the same images as an uninterrupted one."""

    def __init__(self, labels: np.ndarray, seed: int):
        counts = np.bincount(labels)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        super().__init__(weights, num_samples=len(labels), replacement=True)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return super().__iter__()


class EpochShuffle(Sampler[int]):
    """A fresh permutation per epoch, drawn from (seed, epoch) alone.

    torch's RandomSampler draws from the global RNG, which checkpoints do not restore; this order
    depends only on the epoch (Lightning calls set_epoch), so a resumed run sees exactly the batches
    an uninterrupted one would.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(self.size, generator=generator).tolist()
