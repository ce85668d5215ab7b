"""Preprocessing of whole uint8 batches on the model's device, for data sets held in memory.

Per-sample PIL transforms cost one Python call chain per image on the CPU; a 28 px image resized
to 224 px that way caps a loader at a few thousand images per second, below what one GPU trains at.
Here the loader only indexes a uint8 tensor, and resizing, random-resized crops, flips and
normalisation run once per batch after the transfer, on the GPU when there is one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

# Supported by F.interpolate; anything else (e.g. timm's "random") falls back to bilinear.
INTERPOLATIONS = ("bilinear", "bicubic")


class BatchTransform(nn.Module):
    """uint8 [B, C, H, W] (C = 1 or 3) -> normalised float [B, 3, h, w].

    Evaluation follows timm's eval transform: resize the short side to size / crop_pct, centre crop.
    Training (crop_scale set) follows timm's RandomResizedCrop + horizontal flip, drawn per image
    from a generator seeded by (seed, step), so a resumed run sees the same crops as an
    uninterrupted one.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
        crop_scale: Sequence[float] | None = None,
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.0,
        channels_last: bool = False,
    ):
        super().__init__()
        self.size = (int(input_size[-2]), int(input_size[-1]))
        self.interpolation = interpolation if interpolation in INTERPOLATIONS else "bilinear"
        self.crop_pct, self.hflip = crop_pct, hflip
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.log_ratio = (math.log(crop_ratio[0]), math.log(crop_ratio[1]))
        self.channels_last = channels_last
        # [1, 3, 1, 1] in 0..255 units: normalise uint8 values in one fused step.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def storage_size(self) -> int:
        """Side of the uint8 squares that workers hand over for images read from files: the eval
        resize (size / crop_pct), so evaluation only centre-crops and training crops from it."""
        return math.ceil(max(self.size) / self.crop_pct)

    @property
    def training_mode(self) -> bool:
        return self.crop_scale is not None

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, interpolation={self.interpolation}, crop_pct={self.crop_pct}, "
            f"crop_scale={self.crop_scale}, hflip={self.hflip}"
        )

    def forward(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.dim() == 4, (images.dtype, images.shape)
        images = images.float()
        if self.training_mode:
            generator = torch.Generator(device=images.device).manual_seed(seed)
            images = self._random_resized_crop(images, generator)
            if self.hflip > 0:
                flip = torch.rand(len(images), generator=generator, device=images.device)
                images = torch.where((flip < self.hflip).view(-1, 1, 1, 1), images.flip(3), images)
        else:
            images = self._resize_centre_crop(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.mean.device != images.device:
            self.to(images.device)  # once: the transform lives outside the LightningModule
        images = (images - self.mean) / self.std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _resize_centre_crop(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if (height, width) == self.size and self.crop_pct == 1.0:
            return images
        scale = max(self.size[0] / height, self.size[1] / width) / self.crop_pct
        resized = (
            max(self.size[0], round(height * scale)),
            max(self.size[1], round(width * scale)),
        )
        images = F.interpolate(
            images, size=resized, mode=self.interpolation, antialias=scale < 1, align_corners=False
        )
        if self.interpolation == "bicubic":  # bicubic overshoots; PIL clamps to 0..255 too
            images = images.clamp_(0, 255)
        top, left = (resized[0] - self.size[0]) // 2, (resized[1] - self.size[1]) // 2
        return images[..., top : top + self.size[0], left : left + self.size[1]]

    def _random_resized_crop(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Boxes drawn as timm/torchvision do (10 tries of scale x log-uniform ratio, else the whole
        image), cropped and resized in one roi_align call (bilinear, averaging when shrinking)."""
        batch, (height, width), device = len(images), images.shape[-2:], images.device
        tries = 10
        area = height * width * _uniform((batch, tries), *self.crop_scale, generator, device)
        ratio = torch.exp(_uniform((batch, tries), *self.log_ratio, generator, device))
        box_w, box_h = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        fits = (box_w >= 1) & (box_h >= 1) & (box_w <= width) & (box_h <= height)
        first = torch.where(
            fits.any(1), fits.float().argmax(1), torch.full_like(box_w[:, 0], -1).long()
        )
        pick = first.clamp(min=0).unsqueeze(1)
        box_w = torch.where(
            first >= 0, box_w.gather(1, pick).squeeze(1), torch.full_like(first, width).float()
        )
        box_h = torch.where(
            first >= 0, box_h.gather(1, pick).squeeze(1), torch.full_like(first, height).float()
        )
        left = torch.floor(_uniform((batch,), 0, 1, generator, device) * (width - box_w + 1))
        top = torch.floor(_uniform((batch,), 0, 1, generator, device) * (height - box_h + 1))
        boxes = torch.stack(
            [
                torch.arange(batch, device=device, dtype=left.dtype),
                left,
                top,
                left + box_w,
                top + box_h,
            ],
            dim=1,
        )
        return roi_align(images, boxes, output_size=self.size, spatial_scale=1.0, aligned=True)


class Uint8Square:
    """PIL image -> uint8 [3, size, size]: short side resized to size, centre crop. What a worker
    does per image read from a file, so batches stack and cross processes 4x smaller than float."""

    def __init__(self, size: int):
        self.size = size

    def __repr__(self) -> str:
        return f"Uint8Square(size={self.size})"

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        image = image.convert("RGB")
        scale = self.size / min(image.size)
        width, height = (
            max(self.size, round(image.width * scale)),
            max(self.size, round(image.height * scale)),
        )
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (width - self.size) // 2, (height - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator, device
) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low
