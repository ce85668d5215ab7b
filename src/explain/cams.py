"""Heatmaps from pytorch-grad-cam: the method by name (the package's own classes), the target layer
from the timm model's feature_info (or a module name), a ViT's tokens reshaped by the package's
transform. Every map is the model input's H x W with values in [0, 1]."""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np
import torch
from torch import nn

from src.errors import InvalidInput

# Chosen by experiments/explain_pointing (RESULTS.md): of the maps that change when the weights are
# randomised, LayerCAM at the third-to-last feature_info stage pointed at the evidence most often.
DEFAULT_METHOD = "layercam"
DEFAULT_STAGE = -3
ALIASES = {"gradcam++": "gradcamplusplus"}


def methods() -> dict[str, type]:
    """Every CAM class pytorch-grad-cam exports (its BaseCAM subclasses), by lower-case name."""
    import pytorch_grad_cam
    from pytorch_grad_cam.base_cam import BaseCAM

    return {
        name.lower(): cls
        for name, cls in vars(pytorch_grad_cam).items()
        if inspect.isclass(cls) and issubclass(cls, BaseCAM) and cls is not BaseCAM
    }


def check_method(method: str | None) -> str:
    """The canonical name of `method` (None: the default); unknown names list the valid ones."""
    name = ALIASES.get(str(method).lower(), str(method).lower()) if method else DEFAULT_METHOD
    valid = methods()
    if name not in valid:
        names = sorted([*valid, *ALIASES])
        raise InvalidInput(f"method={method}: not a pytorch-grad-cam method; valid: {names}.")
    return name


def stage_names(model: nn.Module) -> list[str]:
    """The modules timm's feature_info names, stem to head (the stages a map can come from)."""
    info = getattr(model, "feature_info", None) or []
    return [entry["module"] for entry in info if entry.get("module")]


def target_layer(model: nn.Module, layer: str | int | None = None) -> tuple[str, nn.Module]:
    """(name, module): a module name, a feature_info stage index (-1 the last), or the default
    stage. An unknown name lists the stages and says where the other names come from."""
    stages = stage_names(model)
    modules = dict(model.named_modules())
    if layer is None or isinstance(layer, int):
        if not stages:
            raise InvalidInput(f"{type(model).__name__} has no feature_info: give layer=<module>.")
        index = DEFAULT_STAGE if layer is None else layer
        if not -len(stages) <= index < len(stages):
            raise InvalidInput(f"layer={layer}: the model has {len(stages)} stages {stages}.")
        layer = stages[index]
        if reshape_transform(model) is not None and f"{layer}.norm1" in modules:
            # A ViT block's output reaches the class-token head through the class token only: its
            # patch tokens get no gradient. Its first norm (pytorch-grad-cam's ViT recipe) does.
            layer = f"{layer}.norm1"
    if layer not in modules or not layer:
        raise InvalidInput(
            f"layer={layer}: no such module. Its stages (timm feature_info): {stages}; any name "
            "of model.named_modules() works too."
        )
    return layer, modules[layer]


def reshape_transform(model: nn.Module):
    """A ViT's token sequence as a C x h x w map (pytorch-grad-cam's vit_reshape_transform, which
    drops one class token); None for a CNN."""
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    embed = getattr(model, "patch_embed", None)
    if embed is None or not hasattr(embed, "grid_size"):
        return None
    height, width = embed.grid_size
    extra = getattr(model, "num_prefix_tokens", 1) - 1  # register tokens beyond the class token
    transform = partial(vit_reshape_transform, height=height, width=width)
    return transform if extra == 0 else (lambda tokens: transform(tokens[:, extra:]))


class Explainer:
    """One CAM object (hooks on one layer) reused for every batch; call with images and the class
    each map is for."""

    def __init__(self, model: nn.Module, method: str | None = None, layer: str | int | None = None):
        self.method = check_method(method)
        self.layer, module = target_layer(model, layer)
        cls = methods()[self.method]
        self.cam = cls(
            model=model, target_layers=[module], reshape_transform=reshape_transform(model)
        )
        if hasattr(self.cam, "batch_size"):  # Score-CAM's masked copies: small batches on a CPU
            self.cam.batch_size = 16

    def __call__(self, images: torch.Tensor, classes: list[int]) -> np.ndarray:
        """[N, H, W] float32 maps in [0, 1], one per image for classes[i]."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        with torch.enable_grad():
            maps = self.cam(input_tensor=images, targets=targets)
        return normalise(maps)

    def close(self) -> None:
        self.cam.activations_and_grads.release()


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] (a constant map: zeros), float32."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(column)
