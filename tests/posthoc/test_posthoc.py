"""Post-hoc methods (src.posthoc): temperature scaling lowers validation NLL and predict applies
it; WiSE-FT's end points reproduce their runs bit for bit; a greedy soup is never below its best
ingredient on validation; bad input is refused before any work; every new run is a usable model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient

from src.errors import InvalidInput
from src.inference.trained import load_checkpoint, load_model, locate
from src.posthoc.calibrate import check_fittable, fit_temperature, fold_temperature
from src.posthoc.scoring import nll
from src.posthoc.soup import Soup
from src.posthoc.sources import Source, check_same_architecture
from src.posthoc.weights import average
from src.posthoc.wise_ft import WiseFT, interpolate
from tests.helpers.compose import compose_config, compose_entry, train
from tests.helpers.exports import assert_onnx_predicts
from tests.helpers.jobs import tiny


# --- fast: the arithmetic ------------------------------------------------------------------
def bits(tensor: torch.Tensor) -> bytes:
    return tensor.numpy().tobytes()


def test_wise_ft_end_points_are_the_end_points_to_the_bit():
    torch.manual_seed(0)
    theta_0 = {"w": torch.randn(4, 3), "z": torch.tensor([-0.0, 1.0]), "n": torch.tensor(3)}
    theta_ft = {"w": torch.randn(4, 3), "z": torch.tensor([0.0, 2.0]), "n": torch.tensor(7)}
    for alpha, expected in ((0.0, theta_0), (1.0, theta_ft)):
        mixed = interpolate(theta_0, theta_ft, alpha)
        assert all(bits(mixed[k]) == bits(expected[k]) for k in expected)  # -0.0 stays -0.0
    half = interpolate(theta_0, theta_ft, 0.5)
    torch.testing.assert_close(half["w"], (theta_0["w"] + theta_ft["w"]) / 2)
    assert int(half["n"]) == 7  # an integer buffer is taken whole, never averaged


def test_a_uniform_average_is_the_mean():
    states = [{"w": torch.full((2,), float(i))} for i in range(4)]
    assert average(states, [0.25] * 4)["w"].tolist() == [1.5, 1.5]


def test_temperature_scaling_recovers_the_temperature_and_lowers_nll():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 10) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = true_logits * 3
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert nll(overconfident / temperature, labels) < nll(overconfident, labels) - 0.1


def test_a_validation_split_without_errors_or_without_hits_is_not_calibrated():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    all_right = torch.nn.functional.one_hot(labels, 3).float() * 2
    # Nothing to fit: the NLL only falls as T -> 0, the "fit" is where LBFGS stopped.
    assert fit_temperature(all_right, labels) < 0.2
    with pytest.raises(InvalidInput, match="every one right, so the validation NLL has no min"):
        check_fittable(all_right, labels)
    with pytest.raises(InvalidInput, match="every one wrong"):
        check_fittable(all_right, (labels + 1) % 3)
    one_wrong = all_right.clone()
    one_wrong[0] = torch.tensor([0.0, 2.0, 0.0])
    check_fittable(one_wrong, labels)  # an interior minimum exists
    assert 0.2 < fit_temperature(one_wrong, labels) < 5


def test_temperature_folded_into_the_head_divides_the_logits():
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=5).eval()
    images = torch.rand(2, 3, 32, 32)
    scaled = fold_temperature(model, 2.5)
    with torch.no_grad():
        torch.testing.assert_close(scaled(images), model(images) / 2.5, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.get_classifier().weight, scaled.get_classifier().weight)


def fake_source(name: str, classes: int, run_id: str) -> Source:
    from src.inference.trained import Trained

    model = timm.create_model(name, pretrained=False, num_classes=classes).eval()
    trained = Trained({"backbone": {"name": name}}, Path("x.ckpt"), run_id)
    trained.class_names = [str(i) for i in range(classes)]
    return Source(trained, model)


def test_soups_of_different_architectures_or_classes_are_refused():
    a, same = fake_source("test_efficientnet", 3, "a"), fake_source("test_efficientnet", 3, "b")
    check_same_architecture([a, same])
    with pytest.raises(InvalidInput, match="run c cannot be averaged .* backbone test_convnext"):
        Soup().check([a, fake_source("test_convnext", 3, "c")])
    with pytest.raises(InvalidInput, match="run d cannot be averaged .* classes"):
        Soup().check([a, fake_source("test_efficientnet", 4, "d")])


def test_soups_of_runs_on_other_data_splits_are_refused():
    """A seed sweep's runs were souped on the first run's validation split, which the others had
    partly trained on (found by the new user's walk)."""
    a, b = fake_source("test_efficientnet", 3, "a"), fake_source("test_efficientnet", 3, "b")
    a.trained.config["dataset"] = {"seed": 42, "fraction": 1.0, "batch_size": 8}
    b.trained.config["dataset"] = {"seed": 42, "fraction": 1.0, "batch_size": 64}
    Soup().check([a, b])  # a loader setting is no split
    b.trained.config["dataset"]["seed"] = 1
    with pytest.raises(
        InvalidInput, match=r"run b was trained on other data splits .* seed 1 vs 42"
    ):
        Soup().check([a, b])


def test_bad_method_input_is_refused_before_any_work():
    a = fake_source("test_efficientnet", 3, "a")
    with pytest.raises(InvalidInput, match="at least 2 runs, got 1"):
        Soup().check([a])
    with pytest.raises(InvalidInput, match="recipe=best: choose one of greedy, uniform"):
        Soup("best").check([a, a])
    with pytest.raises(InvalidInput, match=r"alphas=\[0.5, 1.5\]: .* in \[0, 1\]"):
        WiseFT(alphas=[0.5, 1.5]).check([a])
    with pytest.raises(InvalidInput, match="method.C=0: the probe's inverse regularisation"):
        WiseFT(C=0).check([a])
    a.trained.config["backbone"]["pretrained"] = False
    with pytest.raises(InvalidInput, match="no pretrained starting point"):
        WiseFT().check([a])


@pytest.mark.parametrize("name", ["calibrate", "wise_ft", "soup"])
def test_every_method_config_instantiates(name):
    from src.config import instantiate_node
    from tests.helpers.compose import CONF_DIR, compose_raw

    assert sorted(
        p.stem for p in (CONF_DIR.parent / "src" / "posthoc" / "conf" / "method").glob("*.yaml")
    ) == [
        "calibrate",
        "soup",
        "wise_ft",
    ]
    method = instantiate_node(compose_raw("posthoc", [f"method={name}"]).method)
    assert method.kind == {"calibrate": "calibrated"}.get(name, name)


def test_an_unknown_run_is_refused_in_one_line(tmp_path):
    from src.posthoc.__main__ import posthoc_run

    cfg = compose_config("posthoc", tmp_path, ["run_id=0123456789abcdef", "method=wise_ft"])
    with pytest.raises(InvalidInput, match="run_id=0123456789abcdef: no MLflow store"):
        posthoc_run(cfg)


def test_tta_averages_the_probabilities_of_the_views():
    from src.posthoc.tta import TestTimeAugmented, five_crop

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=4).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        got = TestTimeAugmented(model, ["hflip", "five_crop"])(images).softmax(-1)
        views = [images, images.flip(-1), *five_crop(images)]
        expected = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
    assert len(views) == 7 and views[2].shape == images.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_tta_names_and_flip_sensitive_data_sets_are_checked():
    from src.posthoc.tta import check_tta
    from tests.helpers.compose import compose_raw

    assert check_tta(["hflip", "five_crop"], False, "fashion_mnist") == ["hflip", "five_crop"]
    with pytest.raises(
        InvalidInput, match=r"unknown \['rotate'\]; choose from \['five_crop', 'hflip'\]"
    ):
        check_tta(["rotate"], False, "x")
    with pytest.raises(InvalidInput, match="dataset=digits declares that a flip changes the label"):
        check_tta(["hflip"], True, "digits")
    assert check_tta(["five_crop"], True, "digits") == ["five_crop"]
    flags = {
        name: compose_raw("train", [f"dataset={name}"]).dataset.flip_changes_label
        for name in ("digits", "mnist", "digits_corrupted", "fashion_mnist")
    }
    assert flags == {
        "digits": True,
        "mnist": True,
        "digits_corrupted": True,
        "fashion_mnist": False,
    }


@pytest.mark.slow  # a Python process of its own: the imports take seconds
def test_the_command_refuses_bad_input_with_exit_2_and_one_line(tmp_path):
    import subprocess
    import sys

    from tests.helpers.jobs import ROOT, child_env

    command = [
        sys.executable,
        "-m",
        "src.posthoc",
        "method=soup",
        "run_ids=[abc]",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    done = subprocess.run(
        command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "Invalid input" in line]
    assert len(errors) == 1 and "run_id=abc: no MLflow store" in errors[0]
    assert "Traceback" not in done.stderr


# --- slow: real runs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two tiny digits fine-tunes (two learning rates) in one store."""
    root = tmp_path_factory.mktemp("posthoc")
    ids = {}
    for name, lr in (("a", "1e-3"), ("b", "3e-3")):
        calibrate = f"callbacks.calibrate.enabled={name == 'a'}"  # run a: calibrated at its end
        overrides = tiny(
            calibrate,
            "dataset.num_workers=0",
            f"optimizer.lr={lr}",
            "trainer.max_epochs=1",
            "test=false",
            "dataset.test_samples_per_class=10",
            "dataset.fraction=0.3",
            "logger.mlflow.log_model=false",
        )
        train(compose_config("train", root, overrides, output_dir=root / name))
        client = MlflowClient(f"sqlite:///{root}/mlflow.db")
        (run,) = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.output_dir = '{(root / name).resolve()}'",
        )
        ids[name] = run.info.run_id
    return {"root": root, **ids}


def posthoc(runs: dict, name: str, *overrides: str) -> tuple[str, dict]:
    from src.posthoc.__main__ import posthoc_run

    root = runs["root"]
    return posthoc_run(compose_config("posthoc", root, overrides, output_dir=root / name))


def per_image_accuracy(root: Path, run_id: str, file: str = "test_predictions.csv") -> float:
    """The accuracy of a run's per-image predictions artifact (what a study's intervals resample)."""
    from src.tracking.predictions import run_correctness

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    correct = run_correctness(client, run_id, root / "downloads", file)
    assert correct is not None, f"run {run_id} has no predictions/{file}"
    return float(correct.mean())


def weights_of(root: Path, run_id: str) -> dict[str, torch.Tensor]:
    trained = locate(run_id, None, f"sqlite:///{root}/mlflow.db")
    state = load_checkpoint(trained.checkpoint)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.slow
def test_calibrated_run_lowers_nll_and_predict_applies_the_temperature(runs, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    from src.eval import evaluate_run
    from src.predict import predict_images

    run_id, metrics = posthoc(runs, "calibrated", f"run_id={runs['a']}", "method=calibrate")
    assert metrics["val/nll"] < metrics["val/nll_uncalibrated"]
    assert metrics["temperature"] != 1.0
    assert per_image_accuracy(runs["root"], run_id) == pytest.approx(metrics["test/acc"])
    client = MlflowClient(f"sqlite:///{runs['root']}/mlflow.db")
    logged = client.get_run(run_id)
    assert logged.data.tags["kind"] == "calibrated"
    assert logged.data.tags["mlflow.parentRunId"] == runs["a"]
    assert "calibrated/reliability_val.png" in {
        a.path for a in client.list_artifacts(run_id, "calibrated")
    }
    # The report draws its reliability diagram from the logged bins.
    import mlflow

    from src.report.plots import reliability
    from src.tracking.store import tracking

    with tracking(f"sqlite:///{runs['root']}/mlflow.db"):
        frame = mlflow.search_runs([logged.info.experiment_id], f"attributes.run_id = '{run_id}'")
    (tmp_path / "report").mkdir()
    assert reliability(frame, tmp_path / "report" / "r.png", client).stat().st_size > 0
    assert (
        reliability(frame.assign(run_id=runs["a"]), tmp_path / "report" / "n.png", client) is None
    )
    # eval of the new run gives the calibrated test ECE, predict the calibrated probabilities.
    evaluated = evaluate_run(
        compose_entry("eval", runs["root"], [f"run_id={run_id}", "tta=[five_crop]"])
    )
    assert evaluated["eval/digits/ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    assert {"eval/digits/acc_tta", "eval/digits/ece_tta"} <= set(evaluated)  # beside the plain
    # ... and per image, so a study can resample them: plain and augmented, each its own file.
    for file, key in (("eval_digits.csv", "acc"), ("eval_digits_tta.csv", "acc_tta")):
        got = per_image_accuracy(runs["root"], run_id, file)
        assert got == pytest.approx(evaluated[f"eval/digits/{key}"], abs=1e-6)
    with pytest.raises(InvalidInput, match="dataset=digits declares that a flip changes"):
        evaluate_run(compose_entry("eval", runs["root"], [f"run_id={run_id}", "tta=[hflip]"]))
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(load_digits().images[:3]):
        Image.fromarray((image * 15).astype(np.uint8)).resize((32, 32)).save(images / f"{i}.png")
    overrides = ["top_k=10", f"images={images}"]
    calibrated = predict_images(
        compose_entry("predict", runs["root"], [f"run_id={run_id}", *overrides])
    )
    raw = predict_images(
        compose_entry("predict", runs["root"], [f"run_id={runs['a']}", *overrides])
    )
    t = metrics["temperature"]
    for top_c, top_r in zip(calibrated, raw, strict=True):
        p_raw = torch.tensor([p for _, p in sorted(top_r)])
        expected = (p_raw.log() / t).softmax(0)  # softmax(z / T) from softmax(z)
        got = torch.tensor([p for _, p in sorted(top_c)])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)
    # With TTA: other probabilities, still a distribution over all ten classes.
    augmented = predict_images(
        compose_entry("predict", runs["root"], [f"run_id={run_id}", "tta=[five_crop]", *overrides])
    )
    for top_a, top_c in zip(augmented, calibrated, strict=True):
        assert sum(p for _, p in top_a) == pytest.approx(1.0, abs=1e-5)
        assert dict(top_a) != dict(top_c)


@pytest.mark.slow
def test_training_with_calibrate_enabled_leaves_a_calibrated_child_run(runs):
    client = MlflowClient(f"sqlite:///{runs['root']}/mlflow.db")
    children = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`mlflow.parentRunId` = '{runs['a']}' and tags.kind = 'calibrated'",
    )
    first = [r for r in children if r.data.tags["output_dir"].endswith("/a/calibrated")]
    assert len(first) == 1 and first[0].info.status == "FINISHED"
    metrics = first[0].data.metrics
    assert metrics["val/nll"] <= metrics["val/nll_uncalibrated"]
    assert (runs["root"] / "a" / "calibrated" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs["root"] / "b" / "calibrated").exists()  # off unless asked


@pytest.mark.slow
def test_wise_ft_end_point_runs_are_their_sources_to_the_bit(runs):
    root = runs["root"]
    start = f"method.start_run_id={runs['b']}"
    one, _ = posthoc(
        runs, "w1", f"run_id={runs['a']}", "method=wise_ft", "method.alphas=[1.0]", start
    )
    zero, _ = posthoc(
        runs, "w0", f"run_id={runs['a']}", "method=wise_ft", "method.alphas=[0.0]", start
    )
    for made, source in ((one, runs["a"]), (zero, runs["b"])):
        new, old = weights_of(root, made), weights_of(root, source)
        assert list(new) == list(old)
        assert all(bits(new[k]) == bits(old[k]) for k in old)
    run = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(zero)
    assert run.data.tags["kind"] == "wise_ft" and run.data.params["alpha"] == "0.0"
    assert run.data.tags["mlflow.parentRunId"] == runs["a"]


@pytest.mark.slow
def test_wise_ft_with_a_fitted_probe_chooses_alpha_on_validation(runs):
    run_id, metrics = posthoc(
        runs, "wise", f"run_id={runs['a']}", "method=wise_ft", "method.alphas=[0.0,0.5,1.0]"
    )
    history = MlflowClient(f"sqlite:///{runs['root']}/mlflow.db").get_metric_history(
        run_id, "wise_ft/val_acc"
    )
    curve = {point.step: point.value for point in history}
    assert sorted(curve) == [0, 50, 100]
    assert metrics["val/acc"] == max(curve.values()) == curve[round(100 * metrics["alpha"])]
    assert per_image_accuracy(runs["root"], run_id) == pytest.approx(metrics["test/acc"])


@pytest.mark.slow
def test_greedy_soup_is_never_below_its_best_ingredient_and_exports(runs, tmp_path):
    """A sweep's soup: its finished children found by the parent run id, the soup its child."""
    from src.export import export_run
    from src.posthoc.sources import run_ids_of

    uri = f"sqlite:///{runs['root']}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_run(runs["a"]).info.experiment_id
    sweep = client.create_run(experiment, tags={"kind": "grid"}).info.run_id
    for name in ("a", "b"):
        client.set_tag(runs[name], "mlflow.parentRunId", sweep)
    run_id, metrics = posthoc(runs, "soup", f"parent_run_id={sweep}", "method=soup")
    assert metrics["val/acc"] >= metrics["soup/best_ingredient_val_acc"]
    assert per_image_accuracy(runs["root"], run_id) == pytest.approx(metrics["test/acc"])
    logged = client.get_run(run_id)
    assert logged.data.tags["mlflow.parentRunId"] == sweep and logged.data.tags["kind"] == "soup"
    candidates = logged.data.params["candidates"].strip("[]").replace("'", "").split(", ")
    assert set(candidates) == {runs["a"], runs["b"]}
    assert set(run_ids_of([], sweep, uri)) == {runs["a"], runs["b"]}  # the soup is no ingredient
    overrides = [f"run_id={run_id}", f"output_dir={tmp_path}", "formats=[torchscript,onnx]"]
    made = export_run(compose_entry("export", runs["root"], overrides))
    model = load_model(locate(run_id, None, uri))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.load(made["torchscript"])(images), model(images), atol=1e-4, rtol=0
        )
    assert_onnx_predicts(made["onnx"], model, images)


def test_explain_method_is_not_taken_by_posthocs_method_group():
    """`python -m src.explain method=gradcam` was refused ('method: no such key') once posthoc's
    method group sat in conf/: Hydra read every `method=` as that group's choice."""
    from src.config import load, register_resolvers

    register_resolvers()
    assert load("explain", ["method=gradcam++"]).method == "gradcam++"
    assert load("posthoc", ["method=soup"]).method._target_ == "src.posthoc.soup.Soup"
