"""Every file in conf/ composes and instantiates; the CLI lists the groups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers.compose import CONF_DIR, compose_train

GROUPS = [
    "backbone",
    "strategy",
    "dataset",
    "regularisation",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "averaging",
    "paths",
    "experiment",
    "hparams_search",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_file_is_covered():
    on_disk = {p.parent.name for p in CONF_DIR.glob("*/*.yaml")}
    # method: src.posthoc's group (conf/posthoc.yaml), instantiated in tests/posthoc/test_posthoc.py
    assert on_disk - {"hydra", "method"} <= set(GROUPS), on_disk


def test_shared_bases_live_outside_the_groups():
    """Every file in a group is a choice `--help` lists: a base that several options include
    (conf/_strategy.yaml, conf/_datamodule.yaml) sits at the top, not among the options."""
    bases = sorted(str(p.relative_to(CONF_DIR)) for p in CONF_DIR.glob("*/_*.yaml"))
    assert not bases, f"move {bases} to conf/ (include it as /<name>@_here_)"


# The groups a run composes from; paths (where things go) and monitor (the one metric) are shared.
OWNED = {"backbone", "strategy", "dataset", "regularisation", "optimizer", "scheduler"}
OWNED |= {"trainer", "logger", "callbacks", "averaging"}


def test_each_group_owns_its_keys():
    """No group file reads another group's keys through ${...}: weight decay and early stopping
    reach the optimizer and the trainer from the regularisation preset in code, the averaging
    callback from its own group; a key has one owner."""
    import re

    borrowed = []
    for group in sorted(OWNED):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            for other in re.findall(r"\$\{([a-z_]+)[.}]", path.read_text()):
                if other in OWNED and other != group:
                    borrowed.append(f"{group}/{path.name} reads {other}")
    assert not borrowed, borrowed


def test_weight_decay_is_the_presets_and_one_owner(tmp_path):
    """regularisation.weight_decay reaches every decayed group; optimizer.weight_decay is refused."""
    from src.training import build_parts

    cfg = compose_train(tmp_path, ["regularisation=strong", "logger=none"])
    parts = build_parts(cfg)
    assert parts.optimizer.keywords["weight_decay"] == cfg.regularisation.weight_decay == 0.05
    with pytest.raises(ValueError, match="regularisation.weight_decay"):
        parts.regularisation.optimizer(parts.optimizer)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_config_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "backbone":
        overrides.append("backbone.pretrained=false")  # hub weights need a network
    if (group, option) == ("backbone", "timm"):  # any timm model: the name is the user's
        overrides.append("backbone.name=resnet10t")
    cfg = compose_train(tmp_path, overrides)
    node = cfg.get(group)
    if group == "backbone":
        model = instantiate(node, num_classes=7)
        assert model.get_classifier().out_features == 7
    elif group == "dataset":
        datamodule = instantiate(node)
        assert callable(datamodule.source_factory)  # nothing loaded or downloaded yet
        # Sources that read files a test machine lacks (downloads, user folders, MedMNIST .npz).
        if node.source._target_.rsplit(".", 1)[-1] not in {
            "torchvision_dataset",
            "image_folder",
            "medmnist",
        }:
            assert len(datamodule.splits.train) > 0 and datamodule.num_classes >= 3
    elif group == "optimizer":
        optimizer = instantiate(node)([torch.nn.Parameter(torch.zeros(2))])
        assert optimizer.param_groups[0]["lr"] > 0
    elif group == "scheduler":
        schedule = instantiate(node)(total_steps=10)
        assert 0 < schedule(0) <= 1 and 0 <= schedule(9) <= 1
    elif group == "trainer":
        if node.accelerator == "gpu" and not torch.cuda.is_available():
            node.accelerator = "cpu"  # every other key is still checked by the Trainer
        if "DDP" in str(node.get("strategy")):
            node.accelerator, node.devices = "cpu", 2
        assert isinstance(instantiate(node), L.Trainer)
    elif group == "averaging":  # callbacks.averaging builds it
        built = instantiate(cfg.callbacks.averaging)
        assert (built is None) == (option == "none")
        assert built is None or isinstance(built, L.Callback)
    elif group in ("logger", "callbacks"):
        built = [instantiate(c) for c in (node or {}).values()]
        assert all(isinstance(b, L.Callback | L.loggers.Logger) for b in built if b is not None)
    elif group == "strategy":
        strategy = instantiate(node)
        strategy.check(cfg.trainer.max_epochs)
        groups = strategy.param_groups(instantiate(cfg.backbone, num_classes=3))
        assert "head" in {g["name"] for g in groups}
    elif group == "regularisation":
        from src.regularisation import Regularisation

        regularisation, stated = instantiate(node), OmegaConf.to_container(node, resolve=True)
        assert isinstance(regularisation, Regularisation)
        for key, value in stated.items():  # every key the preset states reaches the object
            if not key.startswith("_"):
                assert getattr(regularisation, key) == value, key
    else:  # paths, experiment: composing resolved every interpolation
        OmegaConf.resolve(cfg)


def test_help_lists_groups_and_options():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "src.train", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for group in GROUPS:
        assert f"{group}:" in out
    for option in [
        "efficientnet_lite0",
        "resnet50",
        "linear_probe",
        "finetune",
        "fashion_mnist",
        "imagefolder",
        "adamw",
        "cosine",
        "mlflow",
    ]:
        assert option in out


@pytest.mark.parametrize(
    "value",
    [
        "finetune",
        "/data/my images",
        "it's",
        "true",
        "NaN",
        "1e-3",
        "a=b",
        "${x}",
        "",
        0.1,
        3,
        True,
        None,
        [64, 64],
        {"root": "/d", "fraction": 0.5},
        ["inf", 1.0],
    ],
)
def test_override_value_reads_back_as_the_same_value(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.config import override_value

    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}")
    assert parsed.value() == value
