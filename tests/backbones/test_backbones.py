"""Offline ImageNet weights are real (cat photo -> class 285); hub failures are fast and clear."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data
from timm.data import create_transform, resolve_model_data_config

from src.backbones import PretrainedWeightsUnavailable, create_backbone
from src.backbones.offline import (
    OFFLINE_BACKBONES,
    PACKAGED_WEIGHTS,
    load_packaged_weights,
    map_by_key_order,
)

EGYPTIAN_CAT, ESPRESSO = 285, 967


def imagenet_top1(model: torch.nn.Module, photo: np.ndarray) -> tuple[int, float]:
    # The whole photo squashed to the model's input size: a centre crop cuts the cat in half.
    config = dict(resolve_model_data_config(model), crop_pct=1.0, crop_mode="squash")
    transform = create_transform(**config, is_training=False)
    with torch.no_grad():
        probs = model.eval()(transform(Image.fromarray(photo)).unsqueeze(0)).softmax(-1)[0]
    return int(probs.argmax()), float(probs.max())


PACKAGED = sorted(PACKAGED_WEIGHTS)


def test_every_offline_backbone_has_packaged_weights():
    assert PACKAGED == [
        "mobilenetv2_100",
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
    ]
    assert sorted(OFFLINE_BACKBONES.values()) == PACKAGED


@pytest.mark.parametrize("architecture", PACKAGED)
def test_packaged_weights_recognise_the_cat_and_the_espresso(architecture):
    # At each model's native resolution (224 / 240 / 260 px): a wrong key order or mean/std fails.
    model = timm.create_model(architecture, pretrained=False)
    load_packaged_weights(model, architecture)
    label, prob = imagenet_top1(model, data.chelsea())
    assert label == EGYPTIAN_CAT and prob > 0.5, (label, prob)
    assert imagenet_top1(model, data.coffee())[0] == ESPRESSO


def test_random_init_does_not_recognise_the_cat():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert imagenet_top1(model, data.chelsea())[1] < 0.1


def test_key_order_mapping_asserts_every_shape():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    source = {f"other.{k}": v.clone() for k, v in model.state_dict().items()}
    assert map_by_key_order(source, model).keys() == model.state_dict().keys()
    first = next(iter(source))
    source[first] = torch.zeros(1, 2, 3)
    with pytest.raises(AssertionError, match="shape mismatch"):
        map_by_key_order(source, model)


def test_packaged_backbone_gets_a_fresh_head_and_keeps_imagenet_body():
    model = create_backbone(
        "tf_efficientnet_lite0", num_classes=3, weights="package", input_size=[3, 64, 64]
    )
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_packaged_weights(reference, "tf_efficientnet_lite0")
    assert model.get_classifier().out_features == 3
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
    assert resolve_model_data_config(model)["input_size"] == (3, 64, 64)


def test_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("resnet18", num_classes=4, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.get_classifier().out_features == 4


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="no/such.pth"):
        create_backbone("resnet18", num_classes=4, weights="no/such.pth")


def test_unknown_backbone_suggests_close_timm_names():
    with pytest.raises(ValueError, match="resnet50") as error:
        create_backbone("resnet05", num_classes=4)
    assert "not a timm model" in str(error.value)


def _assert_clear_offline_error(call) -> None:
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        call()
    assert time.monotonic() - start < 10
    message = str(error.value)
    for hint in (
        "backbone=efficientnet_lite0",
        "backbone=efficientnet_lite1",
        "backbone=efficientnet_lite2",
        "backbone=mobilenetv2",
        "backbone.pretrained=false",
    ):
        assert hint in message


def test_hub_backbone_offline_stops_with_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test touches the network
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    _assert_clear_offline_error(lambda: create_backbone("resnet50.a1_in1k", num_classes=10))


def test_unreachable_hub_stops_with_the_alternatives(monkeypatch):
    monkeypatch.setattr("src.backbones._reachable", lambda *args: False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    _assert_clear_offline_error(lambda: create_backbone("vgg16.tv_in1k", num_classes=10))


def test_advisor_candidates_and_imagenet_top1_cover_the_four_offline_backbones():
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        advise = compose("advise", overrides=["dataset=digits"])
        report = compose("report")
    assert sorted(advise.candidates) == sorted(OFFLINE_BACKBONES)
    top1 = report.imagenet_top1
    assert report.plots.imagenet_vs_transfer.top1 == top1  # the plot reads the one table
    assert "EfficientNet-Lite" in report.imagenet_top1_source  # the source is named
    # MobileNetV2 < Lite0 < Lite1 < Lite2, as their publishers report them.
    assert [top1[a] for a in PACKAGED] == [71.9, 75.1, 76.7, 77.6]
