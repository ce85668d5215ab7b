"""Image files read faithfully: a class folder listed with each file once, and every pixel format
brought to 8-bit RGB without clipping or dropping information.

- 16-bit images are scaled by the 16-bit range (PIL's convert("RGB") clips them: 98 % white).
  32-bit integer images whose values fit 16 bits are the same data in a wider container; beyond,
  and float images outside [0, 1], are scaled by their own range. Floats in [0, 1] are x255.
- Transparent pixels (RGBA, LA, palette or grey with a transparent colour) are composited over
  white, as a viewer shows them; dropping alpha would expose whatever colour they hide.
- A camera's EXIF orientation is applied, so a photo is seen upright as in any viewer.
- Symlinks are followed once: a folder reached twice (a loop such as `ln -s . again`) is read
  once and named once in a warning; a file reached twice counts once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# torchvision's ImageFolder extensions, so the same files count as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
WHITE = (255, 255, 255, 255)


def read_rgb(path: str | Path) -> Image.Image:
    """One file as an 8-bit RGB image (the first frame of an animation)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in WIDE_MODES:
        return Image.fromarray(to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions


def to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Wide pixels to 0..255 by their real range (see the module docstring), never clipped."""
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    values = np.nan_to_num(
        values, nan=0.0, posinf=finite.max(initial=0), neginf=finite.min(initial=0)
    )
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.round(scaled * 255).astype(np.uint8)


def list_images(
    class_dir: Path, visited: set[str], repeats: list[str], extensions=IMAGE_EXTENSIONS
) -> Iterator[Path]:
    """Image files under class_dir, following symlinks but entering each real folder once
    (`visited`, shared across classes); a link to a folder already read goes to `repeats`.
    Hidden entries (.ipynb_checkpoints, macOS ._ files) are not images."""
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            repeats.append(str(folder))
            continue
        visited.add(real)
        entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                stack.append(Path(entry.path))
            elif entry.name.lower().endswith(tuple(extensions)) and not entry.is_dir():
                yield Path(entry.path)  # a broken link too: reported as unreadable
