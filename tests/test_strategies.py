"""Frozen means frozen to the bit, with no backward pass; per-group learning rates are as configured."""

from __future__ import annotations

import functools

import lightning.pytorch as L
import pytest
import torch
from timm.data import resolve_model_data_config

from src.backbones import create_backbone
from src.data import TransferDataModule
from src.data.sources import digits
from src.models.module import TransferModule
from src.models.schedulers import cosine_with_warmup
from src.regularisation import eval_transform
from src.strategies import Finetune, LinearProbe, split_head


def build(strategy, lr=1e-2):
    model = create_backbone(
        "tf_efficientnet_lite0",
        num_classes=10,
        weights="package",
        input_size=[3, 32, 32],
        drop_rate=0.2,
    )
    datamodule = TransferDataModule(digits, batch_size=16, num_workers=0, samples_per_class=10)
    transform = eval_transform(resolve_model_data_config(model))
    datamodule.set_transforms(transform, transform)
    module = TransferModule(
        model,
        strategy,
        functools.partial(torch.optim.AdamW, lr=lr),
        functools.partial(cosine_with_warmup, warmup_fraction=0.0, min_lr_ratio=0.01),
        torch.nn.CrossEntropyLoss(),
        datamodule.classes,
    )
    return module, datamodule


def fit(module, datamodule, steps=3):
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_linear_probe_leaves_backbone_bit_identical_and_trains_head():
    module, datamodule = build(LinearProbe())
    before = snapshot(module)
    head_keys = {f"classifier.{k}" for k in module.model.get_classifier().state_dict()}
    fit(module, datamodule)
    after = snapshot(module)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == head_keys  # weights *and* BatchNorm running statistics unchanged
    backbone, head = split_head(module.model)
    assert all(p.grad is None for p in backbone)  # no backward pass through frozen layers
    assert all(not p.requires_grad for p in backbone) and all(p.requires_grad for p in head)


def test_linear_probe_optimizer_holds_only_the_head():
    module, datamodule = build(LinearProbe())
    trainer = fit(module, datamodule, steps=1)
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["head"]


@pytest.mark.parametrize("mult", [0.1, 0.25])
def test_finetune_groups_get_the_configured_learning_rates(mult):
    module, datamodule = build(Finetune(backbone_lr_mult=mult), lr=0.02)
    before = snapshot(module)
    trainer = fit(module, datamodule, steps=2)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"backbone", "head"}
    assert groups["head"]["initial_lr"] == pytest.approx(0.02)
    assert groups["backbone"]["initial_lr"] == pytest.approx(0.02 * mult)
    assert groups["backbone"]["lr"] / groups["head"]["lr"] == pytest.approx(
        mult
    )  # schedule keeps it
    after = snapshot(module)
    assert not torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])


def test_backbone_lr_mult_must_be_positive():
    with pytest.raises(ValueError, match="backbone_lr_mult=0"):
        Finetune(backbone_lr_mult=0)
