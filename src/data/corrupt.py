"""Corrupted copies of a data set: a controlled knob of domain shift for similarity studies."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from src.data.sources import ArrayImages, Source

# Per severity step: Gaussian blur sigma (pixels of a 28 px image) and Gaussian noise std (of 255).
BLUR_PER_STEP = 0.5
NOISE_PER_STEP = 20.0


def corrupted(source: Callable[[], Source], severity: float = 0.0, seed: int = 0) -> Source:
    """`source`'s images (pool and test) blurred and noised in proportion to `severity`, every image
    the same way in every run (seeded); severity 0 returns the images unchanged."""
    if severity < 0:
        raise ValueError(f"dataset.source.severity={severity}: must be >= 0.")
    base = source()
    parts = [base.pool] + ([base.test] if base.test is not None else [])
    if not all(isinstance(part, ArrayImages) for part in parts):
        raise ValueError("corrupted() needs in-memory images (the offline array sources).")
    rng = np.random.default_rng(seed)
    return Source(
        _corrupt(base.pool, severity, rng), _corrupt(base.test, severity, rng), base.classes
    )


def _corrupt(images: ArrayImages | None, severity: float, rng) -> ArrayImages | None:
    if images is None or severity == 0:
        return images
    from scipy.ndimage import gaussian_filter

    pixels = images.images.astype(np.float32)
    sigma = [0.0, BLUR_PER_STEP * severity, BLUR_PER_STEP * severity] + [0.0] * (pixels.ndim - 3)
    pixels = gaussian_filter(pixels, sigma=sigma)
    pixels += rng.normal(0.0, NOISE_PER_STEP * severity, size=pixels.shape).astype(np.float32)
    return ArrayImages(np.clip(np.round(pixels), 0, 255).astype(np.uint8), images.targets)
