"""Top-k predictions of a model on image files, with the model's evaluation preprocessing."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from src.errors import InvalidInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def image_files(paths: Iterable[str]) -> list[Path]:
    """Files as given; a folder gives its image files (by suffix, symlinks followed once), sorted."""
    from src.data.files import list_images

    paths = list(map(Path, paths))
    if not paths:
        raise InvalidInput("images=[]: give image files or folders, e.g. images=photos/.")
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(list_images(path, set(), [], IMAGE_SUFFIXES))
            if not found:
                raise InvalidInput(
                    f"images: the folder '{path}' holds no image files "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))})."
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInput(f"images: no such file or folder '{path}'.")
    return files


def read_images(files: list[Path]) -> list[Image.Image]:
    """Every file decoded as RGB up front, so a non-image stops the job before any prediction."""
    from src.data.files import read_rgb  # as training read them: 16-bit, alpha, EXIF alike
    from src.progress import progress

    images = []
    for file in progress(files, desc="Reading images", unit="img"):
        try:
            images.append(read_rgb(file))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise InvalidInput(f"images: '{file}' is not an image file ({error}).") from None
    return images


@torch.inference_mode()
def logits(
    model: nn.Module, images: list[Image.Image], transform: Callable, batch_size: int = 32
) -> torch.Tensor:
    """The model's raw outputs, one row per image."""
    from src.progress import progress

    rows = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc="Predicting", unit="batch"):
        batch = torch.stack([transform(image) for image in images[start : start + batch_size]])
        rows.append(model(batch))
    return torch.cat(rows)


def multilabel(
    scores: torch.Tensor, names: list[str], thresholds: list[float]
) -> list[list[tuple[str, float]]]:
    """Per image, every label whose sigmoid reaches its stored threshold (chosen on validation),
    most likely first."""
    probs = scores.sigmoid()
    return [
        sorted(
            ((names[j], float(p)) for j, p in enumerate(row) if p >= thresholds[j]),
            key=lambda pair: -pair[1],
        )
        for row in probs
    ]


def write_label_csv(
    path: Path, files: list[Path], probs: torch.Tensor, names: list[str], thresholds: list[float]
) -> None:
    """Multi-label: one row per image, one column per label (its probability), and `labels`:
    those at or above their thresholds, ';'-separated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *names, "labels"])
        for file, row in zip(files, probs.tolist(), strict=True):
            chosen = [n for n, p, t in zip(names, row, thresholds, strict=True) if p >= t]
            writer.writerow([str(file), *(f"{p:.6f}" for p in row), ";".join(chosen)])


def check_top_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"top_k={k}: an integer >= 1 (capped at the number of classes).")


def top_k(probs: torch.Tensor, names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """(label, probability) pairs, most likely first; k is capped at the number of classes."""
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [(names[int(i)], float(v)) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values, indices, strict=True)
    ]


def imagenet_names() -> list[str]:
    """ImageNet-1k class descriptions from timm, by class index ('Egyptian cat' is 285)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def write_csv(
    path: Path, files: list[Path], tops: list[list[tuple[str, float]]], value: str = "probability"
) -> None:
    """One row per image and rank: file, rank, label, probability (an SVM's: score)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "rank", "label", value])
        for file, top in zip(files, tops, strict=True):
            for rank, (label, p) in enumerate(top, start=1):
                writer.writerow([str(file), rank, label, f"{p:.6f}"])


def format_table(files: list[Path], tops: list[list[tuple[str, float]]]) -> str:
    return "\n".join(
        f"{file}: " + ", ".join(f"{label} {p:.3f}" for label, p in top)
        for file, top in zip(files, tops, strict=True)
    )
