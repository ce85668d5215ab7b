"""Every strategy on a tiny timm model: frozen is frozen to the bit, with no backward pass;
trainable groups move; every group's LR is exactly the configured one, at the right epochs."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from src.strategies import (
    LPFT,
    Finetune,
    GradualUnfreeze,
    LayerDecay,
    LinearProbe,
    Partial,
    Scratch,
    Strategy,
    Surgical,
)
from src.strategies.groups import HEAD, stage_groups, stage_of
from tests.helpers.tiny_module import LR, CrashAt, build_module

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]  # test_resnet, from timm's group_matcher


class RecordGroups(L.Callback):
    """Per epoch: which groups train and each group's lr, as seen by the first step of the epoch."""

    def __init__(self):
        self.trains, self.lrs = {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            groups = trainer.optimizers[0].param_groups
            self.trains[trainer.current_epoch] = {
                stage_of(g["name"]) for g in groups if all(p.requires_grad for p in g["params"])
            }
            self.lrs[trainer.current_epoch] = {g["name"]: g["lr"] for g in groups}


def fit(module, datamodule, epochs=1, steps=3, **trainer_kwargs):
    recorder = RecordGroups()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=steps,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer, recorder


def group_state(module) -> dict[str, dict[str, torch.Tensor]]:
    """Per group: its parameters and the buffers (BatchNorm statistics) of the same modules."""
    by_param = {id(p): name for name, params in stage_groups(module.model) for p in params}
    state = {name: {} for name, _ in stage_groups(module.model)}
    for module_name, sub in module.model.named_modules():
        own = list(sub.named_parameters(recurse=False))
        if not own:
            continue
        group = by_param[id(own[0][1])]
        for key, value in [*own, *sub.named_buffers(recurse=False)]:
            state[group][f"{module_name}.{key}"] = value.detach().clone()
    return state


def changed_groups(before, after) -> set[str]:
    return {g for g in before if any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


CASES = {
    "scratch": (Scratch(), set()),
    "linear_probe": (LinearProbe(), set(STAGES)),
    "finetune": (Finetune(backbone_lr_mult=0.1), set()),
    "partial": (Partial(freeze_stages=2), {"stem", "stage1"}),
    "partial_all_but_last": (Partial(freeze_stages=-1), {"stem", "stage1", "stage2", "stage3"}),
    "surgical": (Surgical(block=1), {"stem", "stage2", "stage3", "stage4"}),
    "gradual_unfreeze": (GradualUnfreeze(milestones=[1, 2]), set(STAGES)),  # epoch 0: head only
    "lp_ft": (LPFT(probe_epochs=1), set(STAGES)),
    "layer_decay": (LayerDecay(decay=0.5), set()),
}


@pytest.mark.parametrize("case", CASES)
def test_frozen_groups_are_bit_identical_and_trainable_ones_move(case):
    strategy, frozen = CASES[case]
    module, datamodule = build_module(strategy)
    before = group_state(module)
    fit(module, datamodule)
    assert changed_groups(before, group_state(module)) == set(before) - frozen
    for name, params in stage_groups(module.model):
        if name in frozen:  # no backward pass through frozen layers, so no gradient either
            assert all(p.grad is None and not p.requires_grad for p in params), name


def test_frozen_groups_stay_in_the_optimizer_with_zero_lr():
    module, datamodule = build_module(Partial(freeze_stages=2, backbone_lr_mult=0.1))
    trainer, recorder = fit(module, datamodule)
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert [n for n in names if not n.endswith("_no_wd")] == [*STAGES, "head"]
    lrs = recorder.lrs[0]
    assert lrs["stem"] == lrs["stage1"] == 0.0
    assert lrs["stage2"] == pytest.approx(LR * 0.1) and lrs["head"] == pytest.approx(LR)
    state = trainer.optimizers[0].state
    assert all(
        p not in state for p in trainer.optimizers[0].param_groups[0]["params"]
    )  # no momentum


def test_layer_decay_scales_follow_timm_and_reach_the_optimizer():
    module, datamodule = build_module(LayerDecay(decay=0.5))
    trainer, recorder = fit(module, datamodule, steps=1)
    groups = trainer.optimizers[0].param_groups
    lrs = recorder.lrs[0]
    assert lrs["head"] == pytest.approx(LR)
    layers = sorted({g["name"].removesuffix("_no_wd") for g in groups} - {"head"})
    for depth, name in enumerate(reversed(layers), start=1):
        assert lrs[name] == pytest.approx(LR * 0.5**depth), name
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("_no_wd"))
    assert all(g["weight_decay"] == 0.01 for g in groups if not g["name"].endswith("_no_wd"))


def test_gradual_unfreezing_happens_exactly_at_its_milestones():
    strategy = GradualUnfreeze(
        milestones=[1, 3], start_lr_fraction=0.25, ramp_epochs=1.0, backbone_lr_mult=0.5
    )
    module, datamodule = build_module(strategy)
    _, recorder = fit(module, datamodule, epochs=5, steps=2)
    assert recorder.trains == {
        0: {"head"},
        1: {"head", "stage4"},
        2: {"head", "stage4"},
        3: {"head", "stage4", "stage3"},
        4: {"head", "stage4", "stage3"},
    }
    assert recorder.lrs[0]["stage4"] == 0.0
    assert recorder.lrs[1]["stage4"] == pytest.approx(LR * 0.5 * 0.25)  # starts at the fraction
    assert recorder.lrs[2]["stage4"] == pytest.approx(LR * 0.5)  # ramped to full after one epoch
    assert recorder.lrs[3]["stage3"] == pytest.approx(LR * 0.5 * 0.25)
    assert recorder.lrs[4]["stem"] == 0.0


def test_lp_ft_probes_then_fine_tunes():
    module, datamodule = build_module(LPFT(probe_epochs=2, backbone_lr_mult=0.1))
    _, recorder = fit(module, datamodule, epochs=3, steps=2)
    assert recorder.trains[0] == recorder.trains[1] == {"head"}
    assert recorder.trains[2] == {*STAGES, "head"}
    assert recorder.lrs[2]["stem"] == pytest.approx(LR * 0.1)


def test_freeze_stats_keeps_batchnorm_statistics_while_weights_train():
    module, datamodule = build_module(Finetune(bn="freeze_stats"))
    norms = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [
        (m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone()) for m in norms
    ]
    fit(module, datamodule)
    assert all(
        torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        for m, (mean, var, _) in zip(norms, stats, strict=True)
    )
    assert any(
        not torch.equal(m.weight, weight) for m, (_, _, weight) in zip(norms, stats, strict=True)
    )


def test_bn_frozen_keeps_affine_parameters_too():
    module, datamodule = build_module(Finetune(bn="frozen"))
    norms = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = [m.weight.detach().clone() for m in norms]
    conv = module.model.layer1[0].conv1.weight
    conv_before = conv.detach().clone()
    fit(module, datamodule)
    assert all(torch.equal(m.weight, w) for m, w in zip(norms, weights, strict=True))
    assert not torch.equal(conv, conv_before)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GradualUnfreeze(milestones=[2, 1]), "strictly increasing"),
        (lambda: Finetune(backbone_lr_mult=0), "backbone_lr_mult=0"),
        (lambda: Finetune(bn="sometimes"), "strategy.bn='sometimes'"),
        (lambda: LayerDecay(decay=1.5), r"strategy.decay=1.5: valid range \(0, 1\]"),
        (lambda: LPFT(probe_epochs=0), "probe_epochs=0"),
    ],
)
def test_invalid_strategy_values_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_schedules_that_cannot_happen_are_refused():
    with pytest.raises(
        ValueError,
        match=r"milestones \[5\] are not before trainer.max_epochs=5; valid range \[1, 4\]",
    ):
        GradualUnfreeze(milestones=[2, 5]).check(max_epochs=5)
    with pytest.raises(ValueError, match="probe_epochs=3"):
        LPFT(probe_epochs=3).check(max_epochs=3)


@pytest.mark.slow
def test_resume_mid_gradual_unfreeze_matches_an_uninterrupted_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(directory, extra_callbacks=(), ckpt_path=None):
        module, datamodule = build_module(
            GradualUnfreeze(milestones=[1, 2, 3], start_lr_fraction=0.5)
        )
        checkpoint = ModelCheckpoint(dirpath=directory, save_last=True)
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=5,
            limit_train_batches=3,
            limit_val_batches=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[checkpoint, *extra_callbacks],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return module

    uninterrupted = run(tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", [CrashAt(epoch=2, batch=1)])  # stage4 unfrozen, stage3 about to be
    resumed = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    expected, actual = uninterrupted.model.state_dict(), resumed.model.state_dict()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(
        expected["layer3.0.conv1.weight"],
        build_module(Finetune())[0].model.state_dict()["layer3.0.conv1.weight"],
    )


def tiny_vit() -> torch.nn.Module:
    """A random-init timm ViT at 32 px, two blocks: it declares no_weight_decay() (pos_embed, cls_token)."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3
    )


@pytest.mark.parametrize(
    "strategy", [Finetune(backbone_lr_mult=0.1), LayerDecay(decay=0.5)], ids=["stages", "layers"]
)
def test_vit_pos_embed_and_cls_token_get_no_weight_decay(strategy):
    """timm's rule (param_groups_weight_decay / param_groups_layer_decay): the model's
    no_weight_decay() names, norms and biases at 0; every other weight at the configured decay,
    every group still at its configured lr."""
    from src.models.module import build_optimizer

    model = tiny_vit()
    factory = functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.05)
    optimizer = build_optimizer(factory, strategy, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        exempt = name in {"pos_embed", "cls_token"} or param.ndim <= 1
        assert group_of[id(param)]["weight_decay"] == (0.0 if exempt else 0.05), name
    assert group_of[id(model.pos_embed)]["weight_decay"] == 0.0
    assert group_of[id(model.cls_token)]["weight_decay"] == 0.0
    assert group_of[id(model.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    head = model.get_classifier().weight
    assert group_of[id(head)]["lr"] == pytest.approx(LR)
    if isinstance(strategy, Finetune):
        assert group_of[id(model.pos_embed)]["lr"] == pytest.approx(LR * 0.1)


def test_frozen_vit_stages_keep_timm_weight_decay_rule():
    """A frozen parameter (requires_grad=False when the optimizer is built) still gets its group
    and timm's decay rule: freezing only flips requires_grad, groups never change."""
    model = tiny_vit()
    model.pos_embed.requires_grad_(False)
    groups = Finetune().param_groups(model)
    decay = {id(p): g.get("weight_decay") for g in groups for p in g["params"]}
    assert decay[id(model.pos_embed)] == 0.0 and not model.pos_embed.requires_grad
    assert decay[id(model.blocks[0].attn.qkv.weight)] is None  # the optimizer's own decay


class HeadAndLastStage(Strategy):
    """A strategy written outside src (test_a_new_strategy_...): the head and the last stage train."""

    def trainable(self, group: str, epoch: int) -> bool:
        return group in (HEAD, self.stage_names[-1])


@pytest.mark.slow  # two training processes (killed, resumed), then eval, predict, export
def test_a_new_strategy_is_one_class_and_one_yaml(tmp_path):
    """One class (above) and one YAML in a conf folder of the test's own (Hydra's searchpath):
    it trains, is killed, resumes, evaluates, predicts and exports through the same road."""
    import mlflow

    from src.eval import evaluate_run
    from src.export import export_run
    from src.predict import predict_images
    from tests.helpers.compose import compose_entry
    from tests.helpers.jobs import launch

    conf = tmp_path / "conf" / "strategy"
    conf.mkdir(parents=True)
    # tests/ is a package: this module is tests.strategies.test_strategies in a child too
    (conf / "head_and_last.yaml").write_text(f"_target_: {__name__}.HeadAndLastStage\n")
    new = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "strategy=head_and_last"]
    killed = launch(tmp_path, "new", "run", extra=new, kill_at="2:1")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = launch(tmp_path, "new", "again", extra=[*new, "resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("new").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["strategy"] == "head_and_last"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 5  # one per epoch
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    optimizer = checkpoint["optimizer_states"][0]  # AdamW keeps state only for what trained
    stepped = {
        stage_of(g["name"])
        for g in optimizer["param_groups"]
        if g["params"][0] in optimizer["state"]
    }
    stages = sorted({stage_of(g["name"]) for g in optimizer["param_groups"]} - {HEAD, "stem"})
    assert stepped == {HEAD, max(stages, key=lambda name: int(name.removeprefix("stage")))}

    run_id = run.info.run_id
    metrics = evaluate_run(compose_entry("eval", tmp_path, [f"run_id={run_id}"]))
    assert 0.0 <= metrics["eval/digits/acc"] <= 1.0
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    tops = predict_images(
        compose_entry("predict", tmp_path, [f"run_id={run_id}", f"images={images}"])
    )
    assert len(tops) == 2
    exported = tmp_path / "export"
    made = export_run(
        compose_entry(
            "export",
            tmp_path,
            [f"run_id={run_id}", "formats=[torchscript]", f"output_dir={exported}"],
        )
    )
    assert Path(made["torchscript"]).is_file()
