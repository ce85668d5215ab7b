"""In-memory data sets: uint8 batches, preprocessed per batch on the device, equal to timm's
per-image transforms where they should be, reproducible where they are random."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from hydra.utils import instantiate

from src.data.batch_transforms import BatchTransform
from src.data.preprocessing import batch_eval_transform, eval_transform
from src.data.sources import digits
from src.models.speed import SpeedUp
from src.regularisation import Regularisation
from tests.helpers.compose import compose_train

CONFIG = {
    "input_size": (3, 64, 64),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


@pytest.fixture(scope="module")
def images():
    return digits().pool


@pytest.mark.parametrize("size,crop_pct", [(64, 0.875), (32, 1.0), (6, 1.0)])
def test_eval_batches_equal_timm_per_image_transform(images, size, crop_pct):
    config = {**CONFIG, "input_size": (3, size, size), "crop_pct": crop_pct}
    per_image = torch.stack([eval_transform(config)(images[i][0]) for i in range(32)])
    batched = batch_eval_transform(config)(images.as_tensor()[:32])
    assert batched.shape == per_image.shape == (32, 3, size, size)
    # Same resize, crop and normalisation; PIL's bicubic kernel (a=-0.5) is a little softer than
    # torch's (a=-0.75), visible at 8x upscaling: ~3/255 per pixel on average.
    assert (batched - per_image).abs().mean() < 0.08
    torch.testing.assert_close(batched.mean(), per_image.mean(), atol=0.02, rtol=0)


def test_random_crops_are_per_image_and_reproducible_from_the_seed(images):
    transform = Regularisation(augmentation="basic", hflip=0.5).batch_train_transform(CONFIG)
    batch = images.as_tensor()[:64]
    first, again, other = transform(batch, seed=1), transform(batch, seed=1), transform(batch, 2)
    assert first.shape == (64, 3, 64, 64)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Every image gets its own crop: the same image repeated is cropped 64 different ways.
    same = transform(batch[:1].expand(64, -1, -1, -1), seed=3)
    assert len(torch.unique(same.flatten(1), dim=0)) > 32


def test_flip_probability_and_full_scale_crop_is_the_resized_image(images):
    batch = images.as_tensor()[:1].expand(400, -1, -1, -1)
    full_scale = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
    plain = BatchTransform((3, 16, 16), (0.5,) * 3, (0.5,) * 3, **full_scale)
    flipping = BatchTransform((3, 16, 16), (0.5,) * 3, (0.5,) * 3, hflip=0.5, **full_scale)
    unflipped = plain(batch, seed=0)
    assert torch.equal(unflipped, unflipped[:1].expand_as(unflipped))
    flipped = (flipping(batch, seed=0) != unflipped).flatten(1).any(1).float().mean()
    assert 0.4 < flipped < 0.6


def test_datamodule_uses_device_batches_only_where_it_can(tmp_path, tiny_overrides):
    def datamodule(*overrides):
        cfg = compose_train(tmp_path, [*tiny_overrides, *overrides])
        module = instantiate(cfg.dataset)
        module.setup()
        module.set_transforms(*instantiate(cfg.regularisation).transforms(CONFIG))
        return module

    fast = datamodule("regularisation=default")
    images, labels = next(iter(fast.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8) and len(labels) == 64
    model_ready, _ = next(fast.eval_batches("val", torch.device("cpu")))
    assert model_ready.dtype == torch.float32 and model_ready.shape[1:] == (3, 64, 64)

    per_image = datamodule("regularisation=strong")  # RandAugment needs PIL, image by image
    assert per_image.batch_transforms is None
    assert next(iter(per_image.train_dataloader()))[0].shape[1:] == (3, 64, 64)
    with pytest.raises(ValueError, match="transforms_on_device=true needs"):
        datamodule("regularisation=strong", "dataset.transforms_on_device=true")
    assert datamodule("dataset.transforms_on_device=false").batch_transforms is None


def test_speed_up_puts_weights_in_channels_last_and_refuses_bad_values():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    module = L.LightningModule()
    module.model = model
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    SpeedUp(channels_last=True).setup(trainer, module, "fit")
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    SpeedUp(channels_last="auto").setup(trainer, module, "fit")  # auto: CPU keeps what it has
    with pytest.raises(ValueError, match="channels_last"):
        SpeedUp(channels_last="yes")
    with pytest.raises(ValueError, match="matmul_precision"):
        SpeedUp(matmul_precision="fast")


def test_image_files_cross_as_uint8_squares_when_on_device(tmp_path, tiny_overrides):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):  # non-square, so the short-side resize and centre crop matter
            green = 100 if label == "b" else 0  # no byte-identical copy under two labels
            Image.new("RGB", (40, 30), (40 * i, green, 0)).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    cfg = compose_train(
        tmp_path,
        [
            *tiny_overrides,
            "dataset=imagefolder",
            f"dataset.source.root={tmp_path / 'images'}",
            "dataset.transforms_on_device=true",
            "dataset.test_fraction=0.34",
        ],
    )
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    datamodule.set_transforms(*instantiate(cfg.regularisation).transforms(CONFIG))
    images, _ = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 74, 74)  # ceil(64 / 0.875)
    model_ready, _ = next(datamodule.eval_batches("test", torch.device("cpu")))
    assert model_ready.dtype == torch.float32 and model_ready.shape[1:] == (3, 64, 64)
