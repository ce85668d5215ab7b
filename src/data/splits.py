"""Stratified, seeded index splits. Per-class permutations make smaller subsets nested in larger ones
(fraction 0.1 is inside fraction 0.5 for the same seed), which keeps data-efficiency curves honest.

Multi-label targets ([N, L] 0/1 rows) have no single class to stratify by: they are permuted as
one group (still seeded and nested), and samples_per_class is refused for them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class SplitIndices:
    train: np.ndarray  # into the pool
    val: np.ndarray  # into the pool, or into the official validation images when there are some
    test: np.ndarray  # into the test images (the pool when the source has no test split)


def _per_class_permutations(
    targets: np.ndarray, indices: np.ndarray, seed: int
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if targets.ndim == 2:  # multi-label: one group
        return [rng.permutation(indices)]
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


def _labelled_subset(
    targets: np.ndarray,
    pool: np.ndarray,
    fraction: float,
    samples_per_class: int | None,
    seed: int,
    minimum: int,
) -> list[np.ndarray]:
    """Per class: the first samples_per_class of its permutation, then the first `fraction` of
    those (at least `minimum`)."""
    if samples_per_class is not None and targets.ndim == 2:
        raise ValueError(
            f"dataset.samples_per_class={samples_per_class}: a multi-label data set has no one class "
            "per image to count by. Use dataset.fraction for low-data runs."
        )
    subsets = []
    for members in _per_class_permutations(targets, pool, seed):
        if samples_per_class is not None:
            if samples_per_class > len(members):
                smallest = min(np.bincount(targets[pool])[np.unique(targets[pool])])
                raise ValueError(
                    f"dataset.samples_per_class={samples_per_class} is more than the smallest class "
                    f"has ({smallest}); valid range [2, {smallest}]."
                )
            members = members[:samples_per_class]
        subsets.append(members[: max(minimum, math.ceil(fraction * len(members)))])
    return subsets


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
    for members in _labelled_subset(targets, pool, fraction, samples_per_class, seed, minimum=2):
        n_val = max(1, round(val_fraction * len(members)))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return SplitIndices(np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), test)


def split_official(
    targets: np.ndarray,
    n_val: int,
    n_test: int,
    fraction: float,
    samples_per_class: int | None,
    seed: int,
) -> SplitIndices:
    """Official train/val/test (e.g. MedMNIST): the low-data settings subsample the training
    images only; validation and test stay whole, so every run is selected and scored alike."""
    subsets = _labelled_subset(
        targets, np.arange(len(targets)), fraction, samples_per_class, seed, minimum=1
    )
    return SplitIndices(np.sort(np.concatenate(subsets)), np.arange(n_val), np.arange(n_test))
