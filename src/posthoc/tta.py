"""Test-time augmentation for src.eval and src.predict (`tta=[hflip,five_crop]`): the model's
softmax probabilities averaged over views of each preprocessed batch, the plain view included.
hflip: the mirror image; five_crop: the four corners and the centre at 87.5 % of the side,
resized back to the input size. Refused where the data set declares that a flip changes the
label (dataset.flip_changes_label: digits, MNIST)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import InvalidInput

CROP = 0.875  # the side of five_crop's crops, as a fraction of the input's (timm's crop_pct)


def hflip(images: torch.Tensor) -> list[torch.Tensor]:
    return [images.flip(-1)]


def five_crop(images: torch.Tensor) -> list[torch.Tensor]:
    from torchvision.transforms.v2.functional import five_crop as crops

    height, width = images.shape[-2:]
    size = [max(1, round(CROP * height)), max(1, round(CROP * width))]
    return [
        F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True)
        for crop in crops(images, size)
    ]


VIEWS = {"hflip": hflip, "five_crop": five_crop}
FLIPS = {"hflip"}  # views that mirror the image


def check_tta(
    names, flip_changes_label: bool, dataset: str, probabilistic: bool = True
) -> list[str]:
    """The view names, each known, none a flip where the data set says a flip changes the label."""
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise InvalidInput(f"tta={names}: unknown {unknown}; choose from {sorted(VIEWS)}.")
    if len(set(names)) != len(names):
        raise InvalidInput(f"tta={names}: each view once.")
    flips = sorted(FLIPS & set(names))
    if flips and flip_changes_label:
        raise InvalidInput(
            f"tta={names}: dataset={dataset} declares that a flip changes the label "
            f"(dataset.flip_changes_label=true); leave out {flips}."
        )
    if names and not probabilistic:
        raise InvalidInput(f"tta={names} averages probabilities: this model scores margins (SVM).")
    return names


def run_views(names, trained) -> list[str]:
    """check_tta for a trained run's model on its own kind of data: its data set's flag (from
    its config.yaml), single-label models only."""
    names = [names] if isinstance(names, str) else list(names or [])
    if names and trained.thresholds is not None:
        raise InvalidInput(f"tta={names}: single-label models only (this one is multi-label).")
    dataset = trained.config.get("dataset") or {}
    flips = bool(dataset.get("flip_changes_label", False))
    return check_tta(names, flips, trained.dataset_name, trained.probabilistic)


class TestTimeAugmented(nn.Module):
    """`model`'s log of the mean softmax over the views: softmax of its output is the averaged
    probability, so metrics and predict treat it like logits."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, list(names)
        self.num_classes = model.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = [images] + [view for name in self.names for view in VIEWS[name](images)]
        probs = torch.stack([self.model(view).float().softmax(-1) for view in views]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
