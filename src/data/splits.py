"""Stratified, seeded index splits. Per-class permutations make smaller subsets nested in larger ones
(fraction 0.1 is inside fraction 0.5 for the same seed), which keeps data-efficiency curves honest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class SplitIndices:
    train: np.ndarray  # into the pool
    val: np.ndarray  # into the pool
    test: np.ndarray  # into the test images (the pool when the source has no test split)


def _per_class_permutations(
    targets: np.ndarray, indices: np.ndarray, seed: int
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = targets[indices]
    return [rng.permutation(indices[labels == c]) for c in np.unique(labels)]


def carve_test(
    targets: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of `targets` into (pool, test), stratified."""
    pool, test = [], []
    for members in _per_class_permutations(targets, np.arange(len(targets)), seed):
        n_test = max(1, round(test_fraction * len(members)))
        test.append(members[:n_test])
        pool.append(members[n_test:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


def cap_per_class(targets: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n of `indices` per class, chosen by `seed` (a smaller, still stratified test split)."""
    kept = [members[:n] for members in _per_class_permutations(targets, indices, seed)]
    return np.sort(np.concatenate(kept))


def split_pool(
    targets: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    fraction: float,
    samples_per_class: int | None,
    val_fraction: float,
    seed: int,
) -> SplitIndices:
    """Subsample the labelled pool per class (samples_per_class, then fraction), then split val off."""
    train, val = [], []
    for members in _per_class_permutations(targets, pool, seed):
        if samples_per_class is not None:
            if samples_per_class > len(members):
                smallest = min(np.bincount(targets[pool])[np.unique(targets[pool])])
                raise ValueError(
                    f"dataset.samples_per_class={samples_per_class} is more than the smallest class "
                    f"has ({smallest}); valid range [2, {smallest}]."
                )
            members = members[:samples_per_class]
        members = members[: max(2, math.ceil(fraction * len(members)))]
        n_val = max(1, round(val_fraction * len(members)))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return SplitIndices(np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), test)
