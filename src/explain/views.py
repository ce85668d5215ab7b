"""What src.explain draws: the top-losses gallery with its heatmaps, heatmaps of correct images
per class, and the t-SNE map of the split's features (beside the pretrained backbone's)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from src.explain import analysis as A
from src.explain import figures as F

log = logging.getLogger(__name__)


def caption(outputs: A.Outputs, i: int, names: list[str], probabilistic: bool) -> str:
    """True label(s), prediction and its probability (an SVM head: its margin), and the loss."""
    if outputs.multilabel:
        true = ",".join(names[j] for j in np.nonzero(outputs.labels[i])[0]) or "-"
        pred = ",".join(names[j] for j in np.nonzero(outputs.predictions[i])[0]) or "-"
        return f"true {true}\npred {pred}\nloss {outputs.losses[i]:.2f}"
    scores, p = outputs.scores[i], int(outputs.predictions[i])
    if probabilistic:
        value = f"p={torch.from_numpy(scores).softmax(0)[p]:.2f}"
    else:
        value = f"margin={scores[p]:.2f}"
    return f"true {names[outputs.labels[i]]}\npred {names[p]} {value}\nloss {outputs.losses[i]:.2f}"


def targets(outputs: A.Outputs, i: int, asked: list[int]) -> list[int]:
    """The classes image i gets a map for: the prediction; multi-label: the labels asked for, else
    its true labels, else its highest-scoring label."""
    if not outputs.multilabel:
        return [int(outputs.predictions[i])]
    return (
        asked
        or [int(j) for j in np.nonzero(outputs.labels[i])[0]]
        or [int(outputs.scores[i].argmax())]
    )


def heatmaps(job, split, device, picked, names_of, folder: Path, captions, title) -> None:
    """Maps of (position, class) pairs: per-image PNG + .npy in folder, one grid figure beside."""
    from src.explain.run import select

    if not picked:
        return
    positions = np.array([p for p, _ in picked])
    images = select(job.datamodule, split, device, positions)
    rgb = F.displayable(images, job.config["mean"], job.config["std"])
    maps = np.concatenate(
        [
            job.explainer(images[s : s + 16], [c for _, c in picked[s : s + 16]])
            for s in range(0, len(picked), 16)
        ]
    )
    F.save_heatmaps(folder, names_of, rgb, maps)
    overlays = [F.overlay(image, heatmap) for image, heatmap in zip(rgb, maps, strict=True)]
    F.grid(overlays, captions, folder.with_suffix(".png"), title)


def gallery(job, outputs, top, names, image_names, split, out: Path) -> None:
    """gallery.png: the top-loss images with captions; cam/top_losses/: their heatmaps."""
    from src.explain.run import select

    device = next(job.model.parameters()).device
    probabilistic = job.trained.probabilistic
    rgb = F.displayable(
        select(job.datamodule, split, device, top), job.config["mean"], job.config["std"]
    )
    captions = [caption(outputs, int(i), names, probabilistic) for i in top]
    F.grid(list(rgb), captions, out / "gallery.png", f"Top {len(top)} losses ({split})")
    picked = [(int(i), c) for i in top for c in targets(outputs, int(i), job.asked)]
    files = [f"{image_names[p]}_{safe(names[c])}" for p, c in picked]
    shown = [f"{image_names[p]}\nmap: {names[c]}" for p, c in picked]
    title = f"{job.explainer.method} at {job.explainer.layer}: top losses"
    heatmaps(job, split, device, picked, files, out / "cam" / "top_losses", shown, title)


def correct_maps(job, outputs, k: int, names, image_names, split, out: Path) -> None:
    """cam/correct/: heatmaps of up to k correctly classified images per class (multi-label: per
    label, images that have it and were given it), the classes asked for or all."""
    device = next(job.model.parameters()).device
    picked = []
    for c in job.asked or range(len(names)):
        has = outputs.labels[:, c] == 1 if outputs.multilabel else outputs.labels == c
        right = outputs.predictions[:, c] == 1 if outputs.multilabel else outputs.correct
        found = np.nonzero(has & right)[0]
        picked += [(int(i), c) for i in found[np.argsort(outputs.losses[found], kind="stable")][:k]]
    files = [f"{image_names[p]}_{safe(names[c])}" for p, c in picked]
    shown = [f"{names[c]}\n{image_names[p]}" for p, c in picked]
    title = f"{job.explainer.method} at {job.explainer.layer}: correct, per class"
    heatmaps(job, split, device, picked, files, out / "cam" / "correct", shown, title)


def feature_map(job, outputs, names, out: Path, split: str, seed: int, max_points: int) -> None:
    """feature_map.png: t-SNE of the split's features, and of the pretrained backbone's when
    the run changed the backbone (fine-tuned); errors marked."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(outputs.losses))[:max_points])
    labels = outputs.labels[keep]
    colour = labels if not outputs.multilabel else labels.argmax(1)
    panels = {"trained": F.tsne(outputs.features[keep], seed)}
    before = pretrained_features(job, split)
    if before is not None:
        panels["pretrained backbone (before transfer)"] = F.tsne(before[keep], seed)
    F.feature_maps(panels, colour, ~outputs.correct[keep], names, out / "feature_map.png")


def pretrained_features(job, split: str) -> np.ndarray | None:
    """The split's features from the backbone's pretrained weights; None for a randomly
    initialised run, a run whose backbone is unchanged (frozen), or weights not available here."""
    from omegaconf import OmegaConf

    from src.config import instantiate_node
    from src.errors import AssetUnavailable

    node = OmegaConf.create(job.trained.config["backbone"])
    if not node.get("pretrained", True):
        return None
    try:
        model = instantiate_node(node, num_classes=job.model.num_classes).eval()
    except (AssetUnavailable, FileNotFoundError, OSError, RuntimeError) as error:
        log.warning("No pretrained feature map: the weights are not available (%s).", error)
        return None
    classifier = job.model.get_classifier()
    head = next(n for n, m in job.model.named_modules() if m is classifier) + "."
    trained, before = job.model.state_dict(), model.state_dict()
    trunk = [k for k in before if k in trained and not k.startswith(head)]
    if all(torch.equal(trained[k], before[k]) for k in trunk):
        return None  # a frozen backbone: the same map twice
    model.to(next(job.model.parameters()).device)
    return A.collect(
        model, job.datamodule.eval_batches(split, next(model.parameters()).device)
    ).features


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
