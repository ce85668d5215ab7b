"""The Dataset views a DataModule loads from: per-image transformed, or uint8 tensors indexed a
whole batch at a time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.sources import LabelledImages


class TransformedSubset(Dataset):
    def __init__(self, images: LabelledImages, indices: np.ndarray, transform: Callable | None):
        self.images, self.indices, self.transform = images, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[int(self.indices[index])]
        return (self.transform(image) if self.transform else image), label


class TensorSubset(Dataset):
    """uint8 images held as one tensor: a batch is one indexing operation, no per-image Python."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray, indices: np.ndarray):
        self.images, self.indices = images, torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.targets = torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[positions]
        return self.images[rows], self.targets[rows]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        row = int(self.indices[position])
        target = self.targets[row]
        return self.images[row], int(target) if target.dim() == 0 else target


def already_batched(batch):
    """collate_fn of a TensorSubset loader: its __getitems__ returns the batch made."""
    return batch
