"""A NaN loss ends the run FAILED with the reason tagged; policy=skip drops the bad updates."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.compose import compose_train, only_run, train

POISON = "+callbacks.poison._target_=tests.helpers.faults.PoisonWeights"


@pytest.mark.slow
def test_forced_nan_fails_the_run_with_the_reason(tmp_path, tiny_overrides):
    cfg = compose_train(
        tmp_path, [*tiny_overrides, POISON, "callbacks.finite_loss.check_every_n_steps=2"]
    )
    with pytest.raises(FloatingPointError, match="non-finite by step 3"):
        train(cfg)
    run = only_run(cfg)
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["error"] and "optimizer.lr" in run.data.tags["error"]


@pytest.mark.slow
def test_skip_policy_leaves_the_weights_finite(tmp_path, tiny_overrides):
    # NaN weights make every later loss NaN, so every later update is skipped and nothing else breaks.
    cfg = compose_train(
        tmp_path, [*tiny_overrides, POISON, "callbacks.finite_loss.policy=skip", "test=false"]
    )
    train(cfg)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    backbone = {k: v for k, v in checkpoint["state_dict"].items() if "classifier" not in k}
    assert all(torch.isfinite(v).all() for v in backbone.values() if v.is_floating_point())
