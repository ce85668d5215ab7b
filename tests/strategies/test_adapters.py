"""LoRA and BitFit: only their parameters (and the head) move, to the bit; LoRA's merged
checkpoint predicts what the adapted model predicts; a crashed run resumes exactly."""

from __future__ import annotations

import pytest
import timm
import torch

from src.models.averaging import EMA
from src.strategies import BitFit, LoRA
from src.strategies.adapters import merged_state
from tests.helpers.tiny_module import CrashAt, build_module, fit_with_checkpoints


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def moved(before, after) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def fit(module, datamodule, tmp_path):
    return fit_with_checkpoints(module, datamodule, tmp_path, epochs=2)


def test_lora_trains_only_its_adapters_and_the_head(tmp_path):
    strategy = LoRA(rank=2, alpha=4, bn="freeze_stats")
    module, datamodule = build_module(strategy)
    for layer in module.model.modules():  # timm zero-initialises each block's last BatchNorm,
        if isinstance(layer, torch.nn.BatchNorm2d):  # which would block every gradient before it
            torch.nn.init.ones_(layer.weight)
    strategy.check_model(module.model)  # the adapters go in before any run (as in src.training)
    before = snapshot(module)
    fit(module, datamodule, tmp_path)
    changed = moved(before, snapshot(module))
    adapters = {k for k in before if ".lora_B." in k}
    assert adapters and adapters <= changed  # every B started at zero and moved
    assert changed == {k for k in before if ".lora_" in k or k.startswith("fc.")}
    assert any(".base_layer.weight" in k for k in before)  # frozen originals, identical to the bit


def test_bitfit_trains_only_biases_and_the_head(tmp_path):
    module, datamodule = build_module(BitFit(bn="freeze_stats"))
    before = snapshot(module)
    fit(module, datamodule, tmp_path)
    changed = moved(before, snapshot(module))
    assert changed <= {k for k in before if k.endswith(".bias")} | {"fc.weight"}
    # timm zero-initialises each block's last BatchNorm weight, which BitFit keeps: the biases
    # before it get no gradient in this random model; those after it and the head's move.
    assert {"fc.weight", "fc.bias", "layer4.0.bn2.bias", "bn1.bias"} <= changed


def test_the_merged_checkpoint_is_a_plain_model_predicting_as_the_adapted_one(tmp_path):
    strategy = LoRA(rank=4, alpha=8)
    module, datamodule = build_module(strategy)
    trainer = fit(module, datamodule, tmp_path)
    saved = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert not any(".lora_" in k or "base_layer" in k for k in saved["state_dict"])
    plain = timm.create_model("test_resnet", num_classes=10)
    plain.load_state_dict(
        {
            k.removeprefix("model."): v
            for k, v in saved["state_dict"].items()
            if k.startswith("model.")
        }
    )
    module.model.load_state_dict(
        {
            k.removeprefix("model."): v
            for k, v in saved["adapter_state_dict"].items()
            if k.startswith("model.")
        }
    )
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        adapted, merged = module.model.eval()(images), plain.eval()(images)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    again = merged_state(module.model, saved["adapter_state_dict"])
    assert all(torch.equal(again[k], v) for k, v in saved["state_dict"].items())


def test_lora_refuses_targets_that_match_nothing():
    module, _ = build_module(LoRA())
    with pytest.raises(
        ValueError, match=r"strategy.target_modules=\['nope'\].*can adapt here: conv1"
    ):
        LoRA(target_modules=["nope"]).check_model(module.model)
    with pytest.raises(ValueError, match="strategy.rank=0"):
        LoRA(rank=0)


@pytest.mark.parametrize("case", ["lora", "bitfit", "lora_ema"])
def test_a_crashed_run_resumes_exactly(case, tmp_path):
    def run(directory, crash=(), ckpt_path=None):
        strategy = BitFit() if case == "bitfit" else LoRA(rank=2, alpha=4)
        module, datamodule = build_module(strategy)
        extra = [EMA(decay=0.8)] if case == "lora_ema" else []
        fit_with_checkpoints(module, datamodule, directory, [*extra, *crash], ckpt_path=ckpt_path)
        return snapshot(module), torch.load(directory / "last.ckpt", weights_only=True)

    expected, expected_file = run(tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", [CrashAt(epoch=2, batch=1)])
    actual, actual_file = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert all(torch.equal(actual[k], v) for k, v in expected.items())
    assert all(
        torch.equal(actual_file["state_dict"][k], v) for k, v in expected_file["state_dict"].items()
    )
