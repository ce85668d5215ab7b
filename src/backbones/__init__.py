"""Backbones: any timm model, with ImageNet weights from the hub, a local file or a registry package."""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
from torch import nn

from src.backbones.offline import OFFLINE_BACKBONES, load_packaged_weights
from src.errors import AssetUnavailable

log = logging.getLogger(__name__)

__all__ = ["create_backbone", "PretrainedWeightsUnavailable", "OFFLINE_BACKBONES"]


class PretrainedWeightsUnavailable(AssetUnavailable):
    """Hub weights were asked for but cannot be fetched from here."""


def create_backbone(
    name: str,
    num_classes: int | None,
    pretrained: bool = True,
    weights: str | None = None,
    input_size: list[int] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    crop_pct: float | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model with a fresh `num_classes` head (its `get_classifier()`); num_classes=None keeps
    the head the weights came with (e.g. ImageNet's, whose posteriors LEEP and NCE read).

    weights: None = timm's source (the hub); "package" = a registry package's file
    (src/backbones/offline.py); otherwise a local file. Input size, mean, std and crop_pct default
    to timm's pretrained config, so `timm.data.resolve_model_data_config(model)` gives the
    preprocessing, overrides included.
    """
    check_model_name(name)
    overlay = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in dict(input_size=input_size, mean=mean, std=std, crop_pct=crop_pct).items()
        if value is not None
    }
    kwargs = dict(model_kwargs or {}, drop_rate=drop_rate, pretrained_cfg_overlay=overlay)
    if drop_path_rate:  # not every architecture takes it (VGG does not), so pass it only when used
        kwargs["drop_path_rate"] = drop_path_rate

    if not pretrained:
        source = "random init"
        model = timm.create_model(name, pretrained=False, **_classes(num_classes), **kwargs)
    elif weights == "package":
        source = "registry package"
        model = timm.create_model(name, pretrained=False, **kwargs)  # 1000-class head to load into
        load_packaged_weights(model, model.pretrained_cfg["architecture"])
        if num_classes is not None:
            model.reset_classifier(num_classes)
    elif weights:
        source = f"file {weights}"
        if not Path(weights).is_file():
            raise FileNotFoundError(f"backbone.weights: no such file '{weights}'.")
        kwargs["pretrained_cfg_overlay"] = dict(overlay, file=str(weights))
        try:  # timm loads the file with weights_only=True: code in a pickle is refused, not run
            if num_classes is None:  # keep the file's head: tell timm its size, not dropped
                num_classes = kwargs["pretrained_cfg_overlay"]["num_classes"] = _file_classes(
                    name, weights
                )
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except (pickle.UnpicklingError, RuntimeError) as error:  # timm re-raises as RuntimeError
            if "weights_only" not in str(error) and "Unsupported global" not in str(error):
                raise
            raise ValueError(
                f"backbone.weights={weights}: refused, the file holds more than plain tensors "
                "and could run code when loaded. Give a state dict of tensors (or .safetensors)."
            ) from None
    else:
        source = "hub"
        ensure_hub_reachable(name)
        model = timm.create_model(name, pretrained=True, **_classes(num_classes), **kwargs)
    log.info(
        "Backbone %s (%s), %d classes, %.1fM params",
        name,
        source,
        model.num_classes,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def _classes(num_classes: int | None) -> dict:
    return {} if num_classes is None else {"num_classes": num_classes}


def _file_classes(name: str, path: str) -> int:
    """How many classes the head stored in a weights file has (timm's classifier key)."""
    classifier = timm.create_model(name, pretrained=False).pretrained_cfg["classifier"]
    state = timm.models.load_state_dict(path)
    return int(state[f"{classifier}.weight"].shape[0])


def check_model_name(name: str) -> None:
    """Refuse an unknown timm name, suggesting the closest ones."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f" Closest timm names: {', '.join(close)}." if close else ""
    raise ValueError(
        f"backbone.name='{name}' is not a timm model.{hint} See timm.list_models() for all names."
    )


def ensure_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with the alternatives, when hub weights are neither cached nor reachable.

    huggingface_hub otherwise retries for about a minute and ends in a traceback from deep inside it.
    """
    import huggingface_hub
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise PretrainedWeightsUnavailable(f"timm has no pretrained weights for '{name}'.")
    if cfg.hf_hub_id:
        repo_id = cfg.hf_hub_id.split("@")[0]
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename), str):
                return  # cached: timm loads it without the network
        url = huggingface_hub.constants.ENDPOINT
    else:
        url = cfg.url
    host = urlparse(url).hostname or ""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    if not offline and _reachable(host, 443, timeout):
        return
    offline_names = ", ".join(f"backbone={key}" for key in OFFLINE_BACKBONES)
    raise PretrainedWeightsUnavailable(
        f"Cannot fetch pretrained weights for '{name}': {host or url} is not reachable from this "
        "machine and the weights are not in the local cache.\n"
        f"  - Offline ImageNet weights: {offline_names}\n"
        "  - Random initialisation: backbone.pretrained=false\n"
        "  - A local weights file: backbone.weights=/path/to/weights.pth"
    )


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
