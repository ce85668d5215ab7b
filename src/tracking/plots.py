"""Matplotlib figures written as PNG files (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true class), with counts in each cell when it fits."""
    plt = _pyplot()
    counts = matrix.float()
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 1.5)))
    image = ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix: {title} (n={int(counts.sum())})",
    )
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_learning_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Loss and accuracy (multi-label: AUROC) per epoch, train against validation."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    score = "acc" if history.get("val/acc") else "auroc"
    words = {"loss": "Loss", "acc": "Accuracy", "auroc": "AUROC (macro)"}
    splits = {"train": "training", "val": "validation"}
    for ax, kind in zip(axes, ("loss", score), strict=True):
        for key, points in history.items():
            if key.split("/")[1].startswith(kind) and points:
                epochs, values = zip(*points, strict=True)
                label = splits.get(key.split("/")[0], key)
                ax.plot([e + 1 for e in epochs], values, marker="o", label=label)  # epoch 1 first
        ax.set(xlabel="Epoch", ylabel=words[kind], title=f"{words[kind]} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
