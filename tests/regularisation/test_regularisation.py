"""Each regularisation knob has an effect, and the right one; every preset composes with every
strategy, or is refused clearly where the combination makes no sense."""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from src.regularisation import Regularisation
from src.regularisation.penalties import L2SP, batch_spectral_shrinkage
from src.strategies import Finetune, LinearProbe
from tests.helpers.compose import CONF_DIR, compose_train, train
from tests.helpers.jobs import WHOLE_SPLITS, tiny


def tiny_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4, **kwargs)


def test_l2sp_is_zero_at_start_and_its_gradient_is_alpha_times_displacement():
    model = tiny_model()
    penalty = L2SP(model, alpha=0.3, beta=0.0)
    assert penalty(model).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.zero_grad()
    penalty(model).backward()
    weight = model.layer1[0].conv1.weight
    expected = 0.3 * (weight.detach() - penalty.reference["layer1.0.conv1.weight"])
    torch.testing.assert_close(weight.grad, expected)
    assert model.get_classifier().weight.grad is None  # the head is not pulled to w0


def test_l2sp_skips_frozen_parameters_and_decays_the_head_with_beta():
    model = tiny_model()
    penalty = L2SP(model, alpha=1.0, beta=0.5)
    groups = LinearProbe().param_groups(model)
    LinearProbe().apply(model, groups, epoch=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    head = model.get_classifier().weight
    assert penalty(model).item() == pytest.approx(0.5 * 0.5 * head.pow(2).sum().item(), rel=1e-5)


@pytest.mark.slow
def test_l2sp_penalty_grows_with_training_and_is_logged(tmp_path):
    overrides = tiny("regularisation=l2sp", "logger=csv")
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["train/l2sp"] > 0


def test_mixup_targets_are_soft_and_sum_to_one():
    mixup = Regularisation(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1).mixup(
        num_classes=5
    )
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    mixed, targets = mixup(images.clone(), labels)  # timm mixes in place
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert (targets.max(dim=1).values < 1).all() and not torch.equal(mixed, images)


@pytest.mark.parametrize("policy", ["basic", "randaugment", "trivialaugment", "autoaugment"])
def test_augmentation_is_reproducible_with_a_seed_and_random_without(policy):
    config = {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
    }
    transform = Regularisation(augmentation=policy, random_erasing=0.5).train_transform(config)
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    ).convert("RGB")
    L.seed_everything(7)
    first = transform(image)
    L.seed_everything(7)
    assert torch.equal(transform(image), first)
    assert first.shape == (3, 32, 32)
    assert any(not torch.equal(transform(image), first) for _ in range(5))


def test_randaugment_never_draws_an_invalid_operation():
    """Its magnitude noise (mstd) reaches the top level, where posterize kept 0 bits (a Pillow
    error that killed regularisation=strong runs at random)."""
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3}
    transform = Regularisation(augmentation="randaugment").train_transform(
        {**config, "std": (0.5,) * 3}
    )
    image = Image.new("RGB", (16, 16), (120, 60, 200))
    L.seed_everything(0)
    for _ in range(3000):
        transform(image)


def test_head_dropout_is_active_in_train_and_off_in_eval():
    model = tiny_model(drop_rate=0.5)
    images = torch.randn(4, 3, 32, 32)
    model.train()
    for m in model.modules():  # isolate dropout: BatchNorm in train mode also changes outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    assert not torch.equal(model(images), model(images))
    model.eval()
    assert torch.equal(model(images), model(images))


def test_weight_decay_skips_norms_and_biases():
    model = tiny_model()
    groups = [g for g in Finetune(0.1).param_groups(model) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        assert decay_of[id(param)] == (0.0 if param.ndim <= 1 else 0.05), name


def test_bss_penalises_the_smallest_singular_values():
    features = torch.diag(torch.tensor([3.0, 2.0, 0.5]))
    assert batch_spectral_shrinkage(features, k=1).item() == pytest.approx(0.25)
    assert batch_spectral_shrinkage(features, k=2).item() == pytest.approx(4.25)


# Files starting with "_" are shared bases (conf/_strategy.yaml), not options.
PRESETS = sorted(p.stem for p in (CONF_DIR / "regularisation").glob("[!_]*.yaml"))
STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("[!_]*.yaml"))
REFUSED = {
    ("l2sp", "scratch"): "pulls weights towards the pretrained",
    ("strong", "feature_extract"): "cannot act there",
    ("l2sp", "feature_extract"): "cannot act there",
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_every_strategy(tmp_path, preset, strategy):
    overrides = tiny(
        "dataset.samples_per_class=16",
        f"regularisation={preset}",
        f"strategy={strategy}",
        f"strategy.cache_dir={tmp_path}/cache" if strategy == "feature_extract" else "seed=0",
        "trainer.max_epochs=4",
        "trainer.fast_dev_run=true",  # one batch of each split
        "logger=none",
        "dataset.batch_size=8",
        without=WHOLE_SPLITS,
    )
    cfg = compose_train(tmp_path, overrides)
    if (preset, strategy) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[(preset, strategy)]):
            train(cfg)
    else:
        assert "test/acc" in train(cfg)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_changes_what_it_states(tmp_path, preset):
    """Every key a preset states reaches the object that acts on it, built by the road's own
    build phase: weight decay in the optimizer's decayed groups, dropout and drop path in the
    backbone, augmentation in the training transform, smoothing and mixup in the loss, L2-SP in the
    penalties, patience in early stopping."""
    from omegaconf import OmegaConf
    from timm.data import resolve_model_data_config

    from src.models.module import build_optimizer
    from src.training import build_module, build_parts, check_parts

    cfg = compose_train(tmp_path, tiny(f"regularisation={preset}", "logger=none"))
    parts = build_parts(cfg)
    check_parts(cfg, parts)
    module, model = build_module(cfg, parts), parts.backbone
    stated = OmegaConf.to_container(cfg.regularisation)
    optimizer = build_optimizer(module.optimizer_factory, parts.strategy, model)
    decays = {g["weight_decay"] for g in optimizer.param_groups}
    assert decays - {0.0} == {stated["weight_decay"]} - {0.0}
    assert model.drop_rate == stated["head_dropout"]
    drop_paths = [m for m in model.modules() if type(m).__name__ == "DropPath"]
    assert bool(drop_paths) == (stated["drop_path_rate"] > 0)
    data_config = resolve_model_data_config(model)
    train_transform = repr(parts.regularisation.train_transform(data_config))
    assert ("RandAugment" in train_transform) == (stated["augmentation"] == "randaugment")
    assert ("RandomErasing" in train_transform) == (stated["random_erasing"] > 0)
    augments = stated["augmentation"] != "none"  # none: the eval transform, flips and crops off
    assert ("RandomHorizontalFlip" in train_transform) == (augments and stated["hflip"] > 0)
    assert ("RandomResizedCrop" in train_transform) == augments
    if stated["mixup_alpha"] or stated["cutmix_alpha"]:
        assert (module.mixup.mixup_alpha, module.mixup.cutmix_alpha) == (
            stated["mixup_alpha"],
            stated["cutmix_alpha"],
        )
        assert module.mixup.label_smoothing == stated["label_smoothing"]
    else:
        assert module.mixup is None
        assert module.criterion.label_smoothing == stated["label_smoothing"]
    penalties = parts.regularisation.penalties(model, None)
    assert ("l2sp" in penalties) == bool(stated["l2sp_alpha"] or stated["l2sp_beta"])
    stopper = parts.regularisation.early_stopper(cfg.monitor.metric, cfg.monitor.mode)
    patience = stated["early_stopping_patience"]
    assert (stopper is None) if patience is None else stopper.patience == patience


def test_early_stopping_follows_the_monitored_metric_and_is_off_without_patience(tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import EarlyStopping

    cfg = compose_train(tmp_path, ["regularisation=strong"])
    stopper = instantiate(cfg.regularisation).early_stopper(cfg.monitor.metric, cfg.monitor.mode)
    assert (
        isinstance(stopper, EarlyStopping)
        and stopper.monitor == "val/acc"
        and stopper.patience == 5
    )
    assert (
        instantiate(
            compose_train(tmp_path, ["regularisation=default"]).regularisation
        ).early_stopper("val/acc", "max")
        is None
    )
