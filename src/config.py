"""What every entry point shares: compose conf/ with overrides, instantiate a config node, build
the data as the backbone wants it, and the tags a run is filtered by.

Only entry points read Hydra's singleton (HydraConfig); everything here takes the job's
config-group choices (`hydra.runtime.choices`) as an argument.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
log = logging.getLogger(__name__)


# Words Hydra's override grammar reads as something other than a string (any case).
_NOT_STRINGS = ("true", "false", "null", "inf", "nan")


def override_value(value) -> str:
    """A value in Hydra's override grammar, read back as the same value: lists and dicts as
    [..] / {..}, strings quoted unless plainly a word or a path (strategy=finetune, not
    strategy='finetune'), so a printed command stays readable."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    word = re.fullmatch(r"[A-Za-z_/][\w./\-]*", text) and text.lower() not in _NOT_STRINGS
    return text if word else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _store_dir(tracking_uri: str, default: str) -> str:
    from src.tracking.store import store_dir

    return store_dir(str(tracking_uri), str(default))


def register_resolvers() -> None:
    """The resolvers conf/ uses (conf/paths: artifacts and caches default to the folder beside the
    tracking store, ${store_dir:...}). Every entry point calls this before Hydra composes; load()
    does for jobs composed in code. Nothing registers at import of src."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("store_dir", _store_dir, replace=True)


def load(config_name: str, overrides=(), hydra: bool = False) -> DictConfig:
    """conf/<config_name>.yaml with `overrides`, as it is (with its hydra node when hydra=True).
    A running Hydra app's own GlobalHydra (the advisor's) is left as it was."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().hydra = outer


def compose(overrides=(), config_name: str = "train") -> tuple[DictConfig, dict[str, str]]:
    """(config, choices): conf/<config_name>.yaml with `overrides`, as @hydra.main hands it to its
    job, and the job's config-group choices (`{"strategy": "finetune", ...}`).

    From here on HydraConfig holds this job (the `${hydra:runtime.choices.*}` of conf/ resolve
    through it): inside another Hydra job, wrap the call in `hydra_config_kept()`. An unknown
    group option raises Hydra's ConfigCompositionException, which lists the valid ones."""
    from hydra.core.hydra_config import HydraConfig

    cfg = load(config_name, overrides, hydra=True)
    HydraConfig.instance().set_config(cfg)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if v is not None}
    with open_dict(cfg):
        del cfg.hydra
    return cfg, choices


@contextmanager
def hydra_config_kept() -> Iterator[None]:
    """HydraConfig is one per process: jobs composed in here (compose) leave the caller's as it was."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    saved = instance.cfg
    try:
        yield
    finally:
        instance.cfg = saved


def required_line(missing: list[str]) -> str:
    """The refusal of a config whose mandatory keys (???) were not given."""
    return f"{missing[0]} is required: add {missing[0]}=<value> to the command" + (
        f" (also missing: {', '.join(missing[1:])})." if missing[1:] else "."
    )


def instantiate_node(node: DictConfig, **kwargs):
    """hydra's instantiate, re-raising a constructor's own error: Hydra's wrapper prints its repr,
    escaping the newlines of a message written to be read."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # A mandatory value left at ??? (dataset.source.root of an image folder): Hydra drops it from
    # a partial, which then fails later with a TypeError. Named here instead.
    missing = sorted(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else []
    if missing:
        raise ValueError(required_line(missing))
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as wrapped:
        if wrapped.__cause__ is None:
            raise
        raise wrapped.__cause__ from None


def build_data(cfg: DictConfig):
    """(datamodule, regularisation, backbone): the data ready, preprocessed as the backbone wants."""
    from timm.data import resolve_model_data_config

    datamodule = instantiate_node(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup()
    regularisation = instantiate_node(cfg.regularisation)
    backbone = instantiate_node(
        cfg.backbone, num_classes=datamodule.num_classes, **regularisation.backbone_arguments()
    )
    data_config = resolve_model_data_config(backbone)
    log.info("Preprocessing from the backbone: %s", data_config)
    datamodule.set_transforms(*regularisation.transforms(data_config))
    return datamodule, regularisation, backbone


def _averaging(cfg: DictConfig) -> str:
    """none | ema | swa, from the averaging node's class when no group choice names it."""
    target = str((cfg.get("averaging") or {}).get("_target_", ""))
    return (
        "none" if not target or target.endswith("no_averaging") else target.rsplit(".")[-1].lower()
    )


def run_tags(cfg: DictConfig, choices: Mapping[str, str] | None) -> dict[str, str]:
    """What a researcher filters runs by in the MLflow UI. `choices`: the job's config-group
    choices (an entry point's `hydra.runtime.choices`, or compose's); without them a
    group is named by its class."""
    from src.tracking import git_state

    choices = choices or {}
    return {
        "kind": str(cfg.get("kind") or "train"),  # what a report selects (train, sweep_trial, ...)
        "backbone": cfg.backbone.name,
        "pretrained": str(cfg.backbone.pretrained),
        "strategy": choices.get("strategy", cfg.strategy._target_.rsplit(".", 1)[-1]),
        "dataset": choices.get("dataset", cfg.dataset.source._target_.rsplit(".", 1)[-1]),
        "regularisation": choices.get("regularisation", "custom"),
        "averaging": choices.get("averaging") or _averaging(cfg),
        "fraction": str(cfg.dataset.fraction),
        "samples_per_class": str(cfg.dataset.samples_per_class),
        "class_weights": str(cfg.dataset.get("class_weights")),
        "sampler": str(cfg.dataset.get("sampler", "shuffle")),
        "seed": str(cfg.seed),
        "study": str(cfg.get("study") or cfg.experiment_name),
        **git_state(PROJECT_ROOT),
    }
