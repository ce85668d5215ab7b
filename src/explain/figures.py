"""The explain figures: a gallery of images with captions, heatmap overlays (pytorch-grad-cam's
show_cam_on_image) and a 2-D map of features (t-SNE) coloured by class with the errors marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from src.tracking.plots import _pyplot, _save


def displayable(images: torch.Tensor, mean, std) -> np.ndarray:
    """Model-ready images [N, C, H, W] back to RGB [N, H, W, 3] in [0, 1] (grey repeated)."""
    mean = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    rgb = (images.detach().cpu() * std + mean).clamp(0, 1)
    rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb
    return rgb.permute(0, 2, 3, 1).numpy().astype(np.float32)


def overlay(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The heatmap (jet) blended over the image, uint8 H x W x 3."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb, heatmap, use_rgb=True)


def save_heatmaps(folder: Path, names: list[str], rgb: np.ndarray, maps: np.ndarray) -> None:
    """Per image <name>.png (the overlay) and <name>.npy (the H x W map in [0, 1])."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, image, heatmap in zip(names, rgb, maps, strict=True):
        Image.fromarray(overlay(image, heatmap)).save(folder / f"{name}.png")
        np.save(folder / f"{name}.npy", heatmap.astype(np.float32))


def grid(images: list[np.ndarray], captions: list[str], path: Path, title: str) -> Path:
    """Images in rows of up to 8, each with its caption, as one PNG."""
    plt = _pyplot()
    columns = min(8, max(1, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.1 * columns, 2.4 * rows + 0.4), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def feature_maps(panels: dict[str, np.ndarray], labels, wrong, names, path: Path) -> Path:
    """One t-SNE scatter per panel (e.g. fine-tuned, pretrained), coloured by true class; the
    model's errors drawn as black crosses."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    # tab10 keeps up to 10 classes apart; tab20 (pairs of shades) only beyond that.
    cmap, top = ("tab10", 9) if len(names) <= 10 else ("tab20", max(19, len(names) - 1))
    for ax, (title, points) in zip(axes[0], panels.items(), strict=True):
        scatter = ax.scatter(*points.T, c=labels, cmap=cmap, s=9, vmin=0, vmax=top)
        ax.scatter(*points[wrong].T, marker="x", c="black", s=18, linewidths=0.8, label="error")
        ax.set(title=title, xticks=[], yticks=[])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i)), label=n)
        for i, n in enumerate(names[:20])
    ]
    handles.append(plt.Line2D([], [], marker="x", ls="", color="black", label="error"))
    axes[0, -1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, path)


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of standardised features; perplexity capped for small sets."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(features)
    perplexity = float(max(2, min(30, (len(features) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(scaled)
