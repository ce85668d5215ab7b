"""`python -m src.predict ... explain=true|<method> [explain_class=<name>]`: a heatmap overlay PNG
and its .npy (the model input's H x W, in [0, 1]) per input image, for the predicted class (every
predicted label of a multi-label model), or the class asked for."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from src.errors import InvalidInput
from src.explain.cams import Explainer
from src.explain.checks import check_classes_asked

log = logging.getLogger(__name__)


@dataclass
class PredictExplainer:
    explainer: Explainer
    asked: list[int]  # class indices of explain_class (empty: the prediction)
    folder: Path
    config: dict  # the model's data config: its evaluation transform, mean and std


def prepare(model: nn.Module, explain, explain_class, names: list[str], folder: Callable[[], Path]):
    """None when explain is off; refuses an unknown method or class before any prediction."""
    if explain is None or explain is False or str(explain).lower() in ("false", "none"):
        if explain_class is not None:
            raise InvalidInput("explain_class= needs explain=true (or explain=<method>).")
        return None
    method = None if explain is True or str(explain).lower() == "true" else str(explain)
    explainer = Explainer(model, method)  # an unknown method: the valid ones listed
    asked = check_classes_asked(explain_class, names, "explain_class")
    from src.inference.trained import data_config

    return PredictExplainer(explainer, asked, folder(), data_config(model))


def classes_of(
    scores: torch.Tensor, thresholds: list[float] | None, asked: list[int]
) -> list[list[int]]:
    """Per image, the classes to map: the asked ones, else the prediction (multi-label: every
    label at or above its threshold, else the most likely one)."""
    if asked:
        return [asked for _ in scores]
    if thresholds is None:
        return [[int(row.argmax())] for row in scores]
    probs = scores.sigmoid()
    return [
        [j for j, p in enumerate(row) if p >= thresholds[j]] or [int(row.argmax())] for row in probs
    ]


def write(job: PredictExplainer, images, files: list[Path], classes, names: list[str]):
    """<folder>/<image stem>_<class>.png and .npy per image and class."""
    from src.data.preprocessing import eval_transform
    from src.explain.figures import displayable, save_heatmaps
    from src.explain.views import safe

    config, transform = job.config, eval_transform(job.config)
    for file, image, wanted in zip(files, images, classes, strict=True):
        batch = transform(image)[None].repeat(len(wanted), 1, 1, 1)
        maps = job.explainer(batch, wanted)
        rgb = displayable(batch, config["mean"], config["std"])
        stems = [f"{file.stem}_{safe(names[c])}" for c in wanted]
        save_heatmaps(job.folder, stems, rgb, maps)
    job.explainer.close()
    log.info(
        "Heatmaps (%s at %s) written to %s", job.explainer.method, job.explainer.layer, job.folder
    )
    return sorted(job.folder.glob("*.npy"))
