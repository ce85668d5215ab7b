"""Long-tailed copies of a balanced data set: a controlled knob of class imbalance.

Follows the CIFAR-LT protocol (Cui et al. 2019): class c keeps n_max * ratio^(-c / (C - 1)) of its
training images (class 0 keeps all, the last class 1/ratio of them), a seeded choice. The official
test split stays as it is, so a balanced test set shows what the imbalance cost each class.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from src.data.sources import ArrayImages, Source


def long_tailed(
    source: Callable[[], Source], imbalance_ratio: float = 10.0, seed: int = 0
) -> Source:
    """`source` with its training pool thinned per class to a geometric long tail."""
    if imbalance_ratio < 1:
        raise ValueError(f"dataset.source.imbalance_ratio={imbalance_ratio}: must be >= 1.")
    base = source()
    if not isinstance(base.pool, ArrayImages) or base.multilabel:
        raise ValueError("long_tailed() needs single-label in-memory images (the array sources).")
    targets, classes = base.pool.targets, len(base.classes)
    rng = np.random.default_rng(seed)
    n_max = np.bincount(targets, minlength=classes).max()
    keep = []
    for c in range(classes):
        members = rng.permutation(np.flatnonzero(targets == c))
        wanted = round(n_max * imbalance_ratio ** (-c / max(1, classes - 1)))
        keep.append(members[: max(2, wanted)])
    rows = np.sort(np.concatenate(keep))
    pool = ArrayImages(base.pool.images[rows], targets[rows])
    return Source(pool, base.test, base.classes, base.skipped, base.val)
