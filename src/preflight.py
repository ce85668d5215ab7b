"""One validation pass before anything is created: every check here runs before an MLflow run, a
store or a folder exists, and each failure names the key and what is valid (entry points turn it
into one line and exit code 2).

Checks that need only the config come first (`check_config`); those that need the built data or
model (`check_input_size`, the strategy's and the task's own checks) follow in one place,
`src.training.check_parts`.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from omegaconf import DictConfig

MAX_SEED = 2**32 - 1  # numpy's seed range, which seed_everything also enforces
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# A monitored metric's better direction: every loss and the calibration error fall.
LOWER_IS_BETTER = ("ece",)


def check_config(cfg: DictConfig) -> None:
    """Values that are wrong whatever the data and the model: seed, epochs and limits, the
    monitored metric's direction, the tracking URI, the resume target's form."""
    from src.tracking.store import check_tracking_uri

    check_seed(cfg.seed)
    check_preprocessing(cfg.backbone)
    if not isinstance(cfg.get("experiment_name"), str) or not cfg.experiment_name.strip():
        raise ValueError(f"experiment_name={cfg.get('experiment_name')!r}: a non-empty name.")
    check_trainer(cfg.trainer, testing=bool(cfg.get("test")))
    check_monitor(cfg.monitor.metric, cfg.monitor.mode)
    for key, logger in (cfg.get("logger") or {}).items():
        if "MLFlow" in logger.get("_target_", ""):
            check_tracking_uri(logger.tracking_uri, f"logger.{key}.tracking_uri")
    resume = cfg.get("resume")
    if resume is not None and resume != "auto" and not RUN_ID.match(str(resume)):
        raise ValueError(f"resume={resume}: choose null, auto or an MLflow run id (32 hex digits).")


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed}: an integer in [0, {MAX_SEED}].")


def check_trainer(trainer: DictConfig, testing: bool) -> None:
    """Degenerate schedules are refused, not recorded: a run that trains no step, or never
    validates (nothing to select its checkpoint by), or tests nothing, is not a result."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(f"trainer.max_epochs={epochs}: an integer >= 1.")
    if not _is_int(steps) or not (steps == -1 or steps >= 1):
        raise ValueError(f"trainer.max_steps={steps}: -1 (no limit) or an integer >= 1.")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if not _is_int(accumulate) or accumulate < 1:
        raise ValueError(f"trainer.accumulate_grad_batches={accumulate}: an integer >= 1.")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (isinstance(clip, int | float) and 0 <= clip < float("inf")):
        # a negative norm would flip every gradient instead of clipping it
        raise ValueError(f"trainer.gradient_clip_val={clip}: a number >= 0, or null (no clipping).")
    # 0 validation batches is a run without validation (benchmarks): allowed, unlike 0 training
    # batches, or 0 test batches when testing.
    limits = {"limit_train_batches": 1, "limit_val_batches": 0, "limit_test_batches": testing}
    for key, least in limits.items():
        value = trainer.get(key, 1.0)
        count = _is_int(value) and value >= least
        fraction = isinstance(value, float) and (0 < value <= 1 or (value == 0 and not least))
        if not (count or fraction):
            raise ValueError(
                f"trainer.{key}={value}: a fraction in (0.0, 1.0] or a count >= 1"
                + ("" if least else " (0: none)")
                + "."
            )


def check_monitor(metric: Any, mode: Any) -> None:
    """The direction must fit the metric: max on a loss would keep the worst checkpoint."""
    if mode not in ("min", "max"):
        raise ValueError(f"monitor.mode={mode}: choose min or max.")
    if not isinstance(metric, str) or "/" not in metric:
        raise ValueError(f"monitor.metric={metric}: a logged metric such as val/acc or val/loss.")
    kind = metric.split("/")[1]  # val/acc, val/acc_class/<class>, train/loss_epoch
    falls = "loss" in kind or kind in LOWER_IS_BETTER
    if (mode == "min") != falls:
        raise ValueError(
            f"monitor.mode={mode} for monitor.metric={metric} would select the worst checkpoint: "
            f"use monitor.mode={'min' if falls else 'max'}."
        )


def check_preprocessing(backbone: DictConfig) -> None:
    """Overrides of the backbone's preprocessing: an RGB input size, three finite means, three
    positive stds (0 divides by zero), a positive crop fraction."""
    if backbone.get("input_size") is not None:
        check_input_form(list(backbone.input_size))
    for key, positive in (("mean", False), ("std", True)):
        values = backbone.get(key)
        if values is None:
            continue
        values = list(values)
        numbers = all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        if len(values) != 3 or not numbers or (positive and min(values) <= 0):
            what = "three numbers > 0" if positive else "three finite numbers"
            raise ValueError(f"backbone.{key}={values}: {what}, one per RGB channel (or null).")
    crop = backbone.get("crop_pct")
    if crop is not None and not (isinstance(crop, int | float) and 0 < crop < float("inf")):
        raise ValueError(f"backbone.crop_pct={crop}: a number > 0 (1.0: no crop), or null.")


def check_input_form(input_size: list) -> None:
    wanted = f"backbone.input_size={input_size}"
    if len(input_size) != 3 or any(not _is_int(v) or v < 1 for v in input_size):
        raise ValueError(f"{wanted}: [3, height, width] with height, width >= 1.")
    if input_size[0] != 3:
        raise ValueError(f"{wanted}: images are read as RGB, so the first entry must be 3.")


def check_input_size(backbone: torch.nn.Module, input_size: tuple[int, ...], name: str) -> None:
    """The images the data module will make (RGB, input_size from the backbone's data config)
    must pass through the backbone: one image of zeros, no gradients, weights untouched."""
    check_input_form(list(input_size))
    wanted = f"backbone.input_size={list(input_size)}"
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, *input_size))
    except (RuntimeError, ValueError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        default = getattr(backbone, "pretrained_cfg", {}).get("input_size")
        raise ValueError(
            f"{wanted}: {name} cannot run on images of this size ({reason}); "
            f"its pretrained size is {list(default) if default else 'unknown'}."
        ) from None
    finally:
        backbone.train(was_training)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
