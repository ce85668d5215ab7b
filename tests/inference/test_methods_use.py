"""Runs of the new kinds (averaging=ema|swa, strategy=lora|bitfit) are usable models like any run:
eval scores the weights the run tested, predict names classes, the TorchScript and ONNX exports predict what
the checkpoint predicts, and a LoRA run ships a plain timm model (no peft) that predicts what its
adapted model predicted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from src.eval import evaluate_run
from src.export import export_run
from src.inference.trained import load_checkpoint, load_model, locate
from src.predict import predict_images
from src.strategies.adapters import ADAPTER_STATE
from tests.helpers.compose import compose_entry, compose_train, train
from tests.helpers.exports import assert_onnx_predicts
from tests.helpers.jobs import tiny

KINDS = {  # two runs cover the four new kinds
    "lora_ema": ["strategy=lora", "strategy.rank=2", "averaging=ema"],
    "bitfit_swa": ["strategy=bitfit", "averaging=swa", "averaging.start_fraction=0.5"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str, dict]]:
    """kind -> (root, MLflow run id, the run's metrics) of one tiny real run each."""
    made = {}
    for kind, overrides in KINDS.items():
        root = tmp_path_factory.mktemp(kind)
        metrics = train(
            compose_train(
                root,
                tiny(
                    *overrides,
                    "trainer.limit_test_batches=1.0",
                    "logger.mlflow.log_model=false",
                    "dataset.num_workers=0",
                ),
            )
        )
        client = MlflowClient(f"sqlite:///{root}/mlflow.db")
        run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
        made[kind] = (root, run.info.run_id, metrics)
    return made


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_eval_scores_what_the_run_tested_and_exports_match(runs, kind, tmp_path):
    root, run_id, metrics = runs[kind]
    scored = evaluate_run(compose_entry("eval", root, [f"run_id={run_id}"]))
    acc = next(value for key, value in scored.items() if key.endswith("/acc"))
    assert acc == pytest.approx(metrics["test/acc"], abs=1e-6)  # the shipped weights were tested
    tops = predict_images(
        compose_entry("predict", root, [f"run_id={run_id}", f"images={digit(tmp_path)}"])
    )
    assert {label for label, _ in tops[0]} <= {str(i) for i in range(10)}
    formats = ["formats=[torchscript,onnx]", f"output_dir={tmp_path}"]
    made = export_run(compose_entry("export", root, [f"run_id={run_id}", *formats]))
    trained = locate(run_id, None, f"sqlite:///{root}/mlflow.db")
    model = load_model(trained)
    assert not any("lora" in type(m).__name__.lower() for m in model.modules())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.load(made["torchscript"])(images), model(images), atol=1e-4, rtol=0
        )
    assert_onnx_predicts(made["onnx"], model, images)
    state = load_checkpoint(trained.checkpoint)
    logged = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id).data
    params = logged.params
    # The run says whether the checkpoint it tested and ships holds the average (EMA: always).
    shipped = "average" if state["weights_averaged"] else "raw"
    assert logged.tags["averaging_shipped"] == shipped
    assert kind != "lora_ema" or shipped == "average"
    own = {
        k: v
        for k, v in state.get(ADAPTER_STATE, state["state_dict"]).items()
        if k.startswith("model.")
    }
    trains = (lambda k: ".lora_" in k) if kind == "lora_ema" else (lambda k: k.endswith(".bias"))
    expected = sum(v.numel() for k, v in own.items() if trains(k) or ".classifier." in k)
    assert int(params["strategy/trained_parameters"]) == expected
    if kind == "lora_ema":  # shipped: the average (merged), not the raw weights next to it
        average, raw = state[ADAPTER_STATE], state["current_model_state"]
        assert any(
            not torch.equal(v, raw[k])
            for k, v in average.items()
            if k.startswith("model.") and v.is_floating_point()
        )
        assert adapted_logits(trained, state, images) == pytest.approx(
            model(images).detach(), abs=1e-4
        )


def adapted_logits(trained, state: dict, images: torch.Tensor) -> torch.Tensor:
    """The run's model as it trained (LoRA layers in place), from the checkpoint's adapter state."""
    from omegaconf import OmegaConf

    from src.config import instantiate_node

    model = instantiate_node(
        OmegaConf.create(trained.config["backbone"]), num_classes=10, pretrained=False
    )
    instantiate_node(OmegaConf.create(trained.config["strategy"])).add_adapters(model)
    model.load_state_dict(
        {
            k.removeprefix("model."): v
            for k, v in state[ADAPTER_STATE].items()
            if k.startswith("model.")
        }
    )
    with torch.no_grad():
        return model.eval()(images)


def digit(folder: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    path = folder / "digit.png"
    Image.fromarray((load_digits().images[0] * 16).astype("uint8")).save(path)
    return path
