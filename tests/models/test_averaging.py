"""Weight averaging (averaging=ema|swa): the average is what is validated, checkpointed, tested and
shipped; it is the EMA / mean of the raw weights it claims to be; a resume continues it to the bit."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from src.models.averaging import EMA, SWA, ema_decay
from src.strategies import Finetune
from tests.helpers.tiny_module import CrashAt, build_module, fit_with_checkpoints


class RawWeights(L.Callback):
    """The module's own (raw) weights after every optimizer step, and the weights tested."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []
        self.tested: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    def on_test_start(self, trainer, module):
        self.tested = {k: v.detach().clone() for k, v in module.state_dict().items()}


def floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("model.") and v.is_floating_point()}


def test_the_decay_rule_gives_a_half_life_of_the_stated_share_of_the_run():
    decay = ema_decay(total_steps=1000, half_life_fraction=0.1)
    assert decay**100 == pytest.approx(0.5)
    assert ema_decay(total_steps=5, half_life_fraction=0.1) == 0.5  # half-life at least a step
    with pytest.raises(ValueError, match=r"averaging.decay=1.0: valid range \(0, 1\)"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match=r"averaging.start_fraction=1: valid range \[0, 1\)"):
        SWA(start_fraction=1)


@pytest.mark.parametrize("method", ["ema", "swa"])
def test_the_average_is_checkpointed_and_tested_and_is_the_claimed_average(method, tmp_path):
    averaging = EMA(decay=0.7) if method == "ema" else SWA(start_fraction=0.5)
    module, datamodule = build_module(Finetune())
    raw = RawWeights()
    trainer = fit_with_checkpoints(module, datamodule, tmp_path, [raw, averaging], epochs=2)
    steps = [floats(s) for s in raw.steps]
    assert len(steps) == 6
    if method == "ema":  # W_1, then decay x average + (1 - decay) x W_t
        expected = dict(steps[0])
        for state in steps[1:]:
            expected = {k: 0.7 * expected[k] + 0.3 * state[k] for k in expected}
    else:  # the equal-weight mean of the steps from start_step = 3 on
        assert averaging.start_step == 3
        expected = {k: sum(s[k] for s in steps[3:]) / 3 for k in steps[0]}
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    for key, value in expected.items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(last["current_model_state"][key], steps[-1][key])
    assert any(not torch.equal(expected[k], steps[-1][k]) for k in expected)  # averaged != raw
    trainer.test(module, datamodule=datamodule, ckpt_path="best")
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    for key in expected:  # the test ran on the best checkpoint's weights (not its raw ones)
        assert torch.equal(raw.tested[key], best["state_dict"][key])


@pytest.mark.parametrize("method", ["ema", "swa"])
def test_resume_continues_the_average_to_the_bit(method, tmp_path):
    def run(directory, crash=(), ckpt_path=None):
        averaging = EMA(decay=0.8) if method == "ema" else SWA(start_fraction=0.3)
        module, datamodule = build_module(Finetune())
        fit_with_checkpoints(
            module, datamodule, directory, [averaging, *crash], ckpt_path=ckpt_path
        )
        return torch.load(directory / "last.ckpt", weights_only=True)

    uninterrupted = run(tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", [CrashAt(epoch=2, batch=1)])
    resumed = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    for part in ("state_dict", "current_model_state", "averaging_state"):
        assert resumed[part].keys() == uninterrupted[part].keys()
        for key, value in uninterrupted[part].items():
            assert torch.equal(resumed[part][key], value), (part, key)
    assert int(resumed["averaging_state"]["n_averaged"]) == (9 if method == "ema" else 7)


def test_a_bad_averaging_value_is_refused_before_the_run(tmp_path):
    from src.errors import InvalidInput
    from tests.helpers.compose import compose_train, train
    from tests.helpers.jobs import tiny

    with pytest.raises(InvalidInput, match=r"averaging.decay=1.5: valid range \(0, 1\)"):
        train(compose_train(tmp_path, [*tiny(), "averaging=ema", "averaging.decay=1.5"]))
    assert not (tmp_path / "mlflow.db").exists()


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_a_run_stopped_before_averaging_began_keeps_its_own_weights(tmp_path):
    module, datamodule = build_module(Finetune())
    raw = RawWeights()
    callbacks = [raw, SWA(start_fraction=0.75), StopAfterFirstEpoch()]  # stops at step 3 of 6
    fit_with_checkpoints(module, datamodule, tmp_path, callbacks, epochs=2)
    assert len(raw.steps) == 3
    final = floats(module.state_dict())
    assert all(torch.equal(final[k], v) for k, v in raw.steps[-1].items() if k in final)
    assert "current_model_state" not in torch.load(tmp_path / "last.ckpt", weights_only=True)


def test_which_weights_the_tested_checkpoint_holds_is_said(tmp_path, caplog):
    """The best checkpoint of a run stopped before SWA's first update holds raw weights: testing
    it says so (warning, averaging_shipped=raw); an averaged checkpoint says average."""
    module, datamodule = build_module(Finetune())
    swa = SWA(start_fraction=0.75)
    trainer = fit_with_checkpoints(
        module, datamodule, tmp_path, [swa, StopAfterFirstEpoch()], epochs=2
    )
    with caplog.at_level("WARNING", logger="src.models.averaging"):
        trainer.test(module, datamodule=datamodule, ckpt_path="best")
    assert swa.shipped == "raw" and "ships raw weights" in caplog.text
    module, datamodule = build_module(Finetune())
    ema = EMA(decay=0.7)
    trainer = fit_with_checkpoints(module, datamodule, tmp_path / "ema", [ema], epochs=2)
    trainer.test(module, datamodule=datamodule, ckpt_path="best")
    assert ema.shipped == "average"
