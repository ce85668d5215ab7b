"""The prefix cache: a run that caches its frozen layers' outputs trains exactly as one that does
not, keeps the whole model in its checkpoints, and is off (saying why) wherever it would not be
exact."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from src.caching.prefix import plan
from src.config import build_data
from src.errors import InvalidInput
from src.strategies import LPFT, Finetune, GradualUnfreeze, LinearProbe, Partial, Surgical
from tests.helpers.compose import compose_train, train
from tests.helpers.jobs import tiny

NO_AUGMENTATION = "regularisation.augmentation=none"


def small_job(tmp_path: Path, overrides: list[str]):
    return compose_train(tmp_path, tiny("logger=none", NO_AUGMENTATION, *overrides))


def last_weights(root: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    return checkpoint["state_dict"]


@pytest.mark.slow  # three real training runs each (the fast suite keeps one: test_train)
@pytest.mark.parametrize(
    "strategy",
    [
        ["strategy=partial", "strategy.freeze_stages=-2"],
        ["strategy=linear_probe"],
        ["strategy=surgical", "strategy.block=-1"],
        ["strategy=gradual_unfreeze", "strategy.milestones=[1]"],
    ],
    ids=lambda overrides: overrides[0].removeprefix("strategy="),
)
def test_a_cached_run_ends_where_an_uncached_one_does(tmp_path, caplog, one_thread, strategy):
    caplog.set_level(logging.INFO, logger="src.caching")
    cache = f"strategy.prefix_cache_dir={tmp_path / 'cache'}"
    plain = train(small_job(tmp_path / "plain", [*strategy, "strategy.cache_prefix=false", cache]))
    assert "Prefix cache: on" not in caplog.text
    cached = train(small_job(tmp_path / "cached", [*strategy, "strategy.cache_prefix=true", cache]))
    assert "Prefix cache: on" in caplog.text

    before, after = last_weights(tmp_path / "plain"), last_weights(tmp_path / "cached")
    assert before.keys() == after.keys()  # the checkpoint holds the whole model
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # Validated on cached activations, tested on images with the whole (restored) model.
    for key in [k for k in plain if k.startswith(("val/", "test/"))]:
        assert cached[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6), key

    caplog.clear()  # a second run reads both splits from the cache
    train(small_job(tmp_path / "again", [*strategy, cache]))
    assert caplog.text.count("computed in") == 0 and "Prefix cache: on" in caplog.text


def plan_of(tmp_path, strategy, overrides: list[str] = (), max_epochs: int = 3):
    datamodule, regularisation, backbone = build_data(small_job(tmp_path, list(overrides)))
    return plan(strategy, backbone, regularisation, datamodule, max_epochs)


@pytest.mark.parametrize(
    "strategy, first, last",
    [
        (LinearProbe(), "conv_stem", "global_pool"),  # the pooled features
        (Partial(freeze_stages=2), "conv_stem", "blocks.0"),  # stem, stage1
        # ~10 s each on 2 cores: the fast suite keeps the first two.
        pytest.param(Surgical(block=3), "conv_stem", "blocks.1", marks=pytest.mark.slow),
        pytest.param(
            GradualUnfreeze(milestones=[1, 2]), "conv_stem", "blocks.4", marks=pytest.mark.slow
        ),  # surgical: below block 3 (stem, stage1, stage2); gradual: the stages never unfrozen
    ],
)
def test_the_prefix_is_what_stays_frozen_for_the_whole_run(tmp_path, strategy, first, last):
    prefix = plan_of(tmp_path, strategy)
    assert prefix.cached, prefix.reason
    assert (prefix.names[0], prefix.names[-1]) == (first, last)


@pytest.mark.parametrize(
    "strategy, overrides, reason",
    [
        (LinearProbe(), ["regularisation.augmentation=basic"], "random pixel augmentation"),
        (LinearProbe(), ["regularisation.random_erasing=0.25"], "random pixel augmentation"),
        (LinearProbe(), ["regularisation.mixup_alpha=0.2"], "mixup/cutmix"),
        (LinearProbe(), ["regularisation.bss_eta=0.001"], "BSS"),
        (LinearProbe(cache_prefix=False), [], "cache_prefix=false"),
        (Finetune(), [], "no layer before the first trainable one"),
        (LPFT(probe_epochs=1), [], "no layer before the first trainable one"),  # stem trains later
        (Partial(freeze_stages=2, bn="train"), [], None),  # frozen stages keep eval BN anyway
    ],
)
def test_off_with_the_reason_where_it_would_not_be_exact(tmp_path, strategy, overrides, reason):
    prefix = plan_of(tmp_path, strategy, overrides)
    if reason is None:
        assert prefix.cached, prefix.reason
    else:
        assert not prefix.cached and reason in prefix.reason


def test_random_layers_end_the_prefix(tmp_path):
    """Drop path is random in training: timm's rate grows from 0 at the first block, so the
    prefix ends where the first non-zero one is (stage2)."""
    prefix = plan_of(tmp_path, LinearProbe(), ["regularisation.drop_path_rate=0.1"])
    assert prefix.names == ["conv_stem", "bn1", "blocks.0"]


def test_cache_prefix_true_refuses_a_run_it_cannot_make_exact(tmp_path):
    cfg = compose_train(
        tmp_path, ["dataset=digits", "strategy=linear_probe", "strategy.cache_prefix=true"]
    )
    with pytest.raises(InvalidInput, match="strategy.cache_prefix=true.*random pixel augmentation"):
        train(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_cache_prefix_takes_auto_true_or_false():
    with pytest.raises(ValueError, match="strategy.cache_prefix='yes': choose auto, true or false"):
        LinearProbe(cache_prefix="yes")


@pytest.mark.parametrize("value", [0, 1, "yes", None, 2.0])
def test_cache_prefix_takes_only_auto_true_or_false(value):
    from src.strategies.prefix import check_mode

    with pytest.raises(ValueError, match="choose auto, true or false"):
        check_mode(value)
    for valid in ("auto", True, False):
        check_mode(valid)
