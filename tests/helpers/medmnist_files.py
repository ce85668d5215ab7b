"""Tiny files in the official MedMNIST .npz layout (real keys, shapes and dtypes; made-up pixels
and labels), so the real loader can be tested without the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPLIT_SIZES = {"train": 60, "val": 30, "test": 30}


def write_medmnist_npz(
    folder: Path, flag: str, size: int = 28, sizes: dict[str, int] = SPLIT_SIZES, seed: int = 0
) -> Path:
    """<folder>/<flag>[_<size>].npz laid out as medmnist's INFO describes that set; single-label
    sets get every class in every split, multi-label sets every label positive somewhere."""
    from medmnist import INFO

    info, rng = INFO[flag], np.random.default_rng(seed)
    n_labels, multilabel = len(info["label"]), info["task"].startswith("multi-label")
    shape = (size, size) if info["n_channels"] == 1 else (size, size, 3)
    arrays = {}
    for split, n in sizes.items():
        if multilabel:
            labels = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
            labels[np.arange(n_labels) % n, np.arange(n_labels)] = 1  # every label has positives
        else:
            labels = (np.arange(n) % n_labels).astype(np.uint8).reshape(n, 1)
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{flag}{'' if size == 28 else f'_{size}'}.npz"
    np.savez_compressed(path, **arrays)
    return path
