"""The pointing game's image folder: class q<k> = the quadrant (0 top-left, 1 top-right,
2 bottom-left, 3 bottom-right) holding a bright square; uniform noise everywhere else.
`python make_data.py <folder> [per_class] [size]`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def quadrant_image(rng: np.random.Generator, quadrant: int, size: int) -> np.ndarray:
    """size x size RGB noise in [0, 150) with a bright (220-255) square of side size/5 to size/4
    somewhere inside the quadrant."""
    image = rng.integers(0, 150, (size, size, 3), dtype=np.uint8)
    half, side = size // 2, int(rng.integers(size // 5, size // 4 + 1))
    top = (quadrant // 2) * half + int(rng.integers(0, half - side + 1))
    left = (quadrant % 2) * half + int(rng.integers(0, half - side + 1))
    image[top : top + side, left : left + side] = rng.integers(220, 256, 3, dtype=np.uint8)
    return image


def main(folder: Path, per_class: int = 120, size: int = 96, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for quadrant in range(4):
        target = folder / f"q{quadrant}"
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(quadrant_image(rng, quadrant, size)).save(target / f"{i:04d}.png")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), *(int(a) for a in args[1:]))
