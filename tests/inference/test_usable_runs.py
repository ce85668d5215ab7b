"""Every finished run is a usable model, whatever its strategy: feature_extract's scikit-learn heads
become exact torch layers inside the backbone, so eval, predict and export load the run like any
other; SVMs log no loss; checkpoints load as plain data only; multi-label predict uses the stored
thresholds; the advisor hands the user's data set node to its jobs and prints a minimal command."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from src.errors import InvalidInput
from src.eval import evaluate_run
from src.export import export_run
from src.pipelines.features import sklearn_classifier
from src.predict import predict_images
from src.strategies.heads import KernelSVM, affine
from tests.helpers.compose import compose_entry, compose_train, train
from tests.helpers.jobs import ROOT, WHOLE_SPLITS, tiny


# --- the heads equal scikit-learn -----------------------------------------------------------
def digits_features(classes: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keep = y < classes
    return (x[keep] * 3 + 1).astype(np.float32), y[keep]


def torch_scores(pipeline, kind: str, x: np.ndarray, outputs: int) -> np.ndarray:
    if kind == "svm":
        return KernelSVM.from_fitted(pipeline, outputs)(torch.from_numpy(x)).numpy()
    weight, bias = affine(pipeline, outputs)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight.data, layer.bias.data = torch.tensor(weight).float(), torch.tensor(bias).float()
    with torch.no_grad():
        return layer(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("kind", ["logistic", "linear_svm", "svm"])
@pytest.mark.parametrize("classes", [10, 2])
def test_heads_give_scikit_learns_decision_values(kind, classes):
    x, y = digits_features(classes)
    pipeline = sklearn_classifier(kind, C=1.0, max_iter=3000, seed=0).fit(x, y)
    expected = pipeline.decision_function(x)
    scores = torch_scores(pipeline, kind, x, classes)
    if classes == 2:  # one margin: class 1 against class 0
        scores = scores[:, 1] - scores[:, 0]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    if kind == "logistic":  # the task's softmax gives the classifier's own probabilities
        probs = torch.from_numpy(scores.reshape(len(x), -1))
        probs = (
            probs.softmax(1)
            if classes > 2
            else torch.stack([1 - probs.sigmoid()[:, 0], probs.sigmoid()[:, 0]], 1)
        )
        np.testing.assert_allclose(probs.numpy(), pipeline.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("kind", ["logistic", "linear_svm", "svm"])
def test_multilabel_heads_give_one_margin_per_label(kind):
    class MultiLabelTask:
        multilabel = True

    x, y = digits_features(10)
    labels = np.stack([y % 2, y > 4, y == 3], 1)
    pipeline = sklearn_classifier(kind, 1.0, 3000, 0, task=MultiLabelTask()).fit(x, labels)
    scores = torch_scores(pipeline, kind, x, 3)
    np.testing.assert_allclose(scores, pipeline.decision_function(x), rtol=1e-5, atol=1e-5)


# --- feature_extract runs are whole models ---------------------------------------------------
def feature_run(root: Path, cache: Path, classifier: str, *overrides: str) -> dict:
    # The tiny job on whole splits: scikit-learn's scores below are compared on all of them.
    job = tiny(
        "strategy=feature_extract",
        f"strategy.classifier={classifier}",
        f"strategy.cache_dir={cache}",
        *overrides,
        without=WHOLE_SPLITS,
    )
    metrics = train(compose_train(root, job))
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {"root": root, "run_id": run.info.run_id, "metrics": metrics, "cache": cache}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """One digits feature_extract run per classifier, on one shared feature cache."""
    cache = tmp_path_factory.mktemp("cache")
    return {
        kind: feature_run(tmp_path_factory.mktemp(kind), cache, kind)
        for kind in ("logistic", "linear", "svm")
    }


def cached_split(cache: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import json

    for path in cache.glob("*.pt"):
        stored = torch.load(path, weights_only=True)
        if "features" in stored and json.loads(stored["identity"])["split"] == split:
            return stored["features"].numpy(), stored["labels"].numpy()
    raise AssertionError(f"no cached {split} features")


@pytest.mark.slow
def test_val_loss_is_scikit_learns_log_loss(runs):
    from sklearn.metrics import log_loss

    run = runs["logistic"]
    train_x, train_y = cached_split(run["cache"], "train")
    val_x, val_y = cached_split(run["cache"], "val")
    pipeline = sklearn_classifier("logistic", C=1.0, max_iter=2000, seed=42).fit(train_x, train_y)
    expected = log_loss(val_y, pipeline.predict_proba(val_x), labels=list(range(10)))
    assert run["metrics"]["val/loss"] == pytest.approx(expected, rel=1e-4)
    assert run["metrics"]["val/acc"] == pytest.approx((pipeline.predict(val_x) == val_y).mean())


@pytest.mark.slow
def test_an_svm_logs_no_loss_and_no_calibration(runs):
    logged = MlflowClient(f"sqlite:///{runs['svm']['root']}/mlflow.db").get_run(
        runs["svm"]["run_id"]
    )
    keys = set(logged.data.metrics)
    assert {"val/acc", "test/acc", "test/f1_macro"} <= keys
    assert not {"val/loss", "test/loss", "val/ece", "test/ece"} & keys


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logistic", "linear", "svm"])
def test_eval_and_predict_load_a_feature_extract_run(runs, kind, tmp_path):
    run = runs[kind]
    root, run_id = run["root"], run["run_id"]
    # No dataset=: the run's own data set and test split, named by its dataset tag.
    metrics = evaluate_run(compose_entry("eval", root, [f"run_id={run_id}"]))
    assert metrics["eval/digits/acc"] == pytest.approx(run["metrics"]["test/acc"], abs=1e-6)
    assert ("eval/digits/ece" in metrics) == (kind != "svm")
    images = tmp_path / "digits"
    images.mkdir()
    write_digit_images(images, 4)
    table = tmp_path / "top.csv"
    overrides = [f"run_id={run_id}", f"images={images}", "top_k=3", f"csv={table}"]
    tops = predict_images(compose_entry("predict", root, overrides))
    assert len(tops) == 4 and all(len(top) == 3 for top in tops)
    header = table.read_text().splitlines()[0]
    assert header == ("file,rank,label,score" if kind == "svm" else "file,rank,label,probability")


def write_digit_images(folder: Path, count: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    for i, image in enumerate(load_digits().images[:count]):
        Image.fromarray((image * 15).astype(np.uint8)).resize((32, 32)).save(folder / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logistic", "svm"])
def test_feature_extract_exports_match_its_checkpoint(runs, kind, tmp_path):
    import json

    import mlflow
    import onnx

    from src.tracking.store import tracking

    run = runs[kind]
    overrides = [
        f"run_id={run['run_id']}",
        "formats=[torchscript,onnx]",
        "mlflow_model=true",
        f"output_dir={tmp_path}",
    ]
    made = export_run(compose_entry("export", run["root"], overrides))  # checked to atol 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "model.pt",
        "provenance.json",
    ]
    # The MLflow pyfunc (the RBF SVM's kernel head included) scores like the TorchScript file.
    images = torch.rand(3, 3, 32, 32)
    expected = torch.jit.load(made["torchscript"])(images).detach().numpy()
    with tracking(f"sqlite:///{run['root']}/mlflow.db"):
        pyfunc = mlflow.pyfunc.load_model(made["mlflow"])
    np.testing.assert_allclose(pyfunc.predict(images.numpy()), expected, atol=1e-4, rtol=0)
    metadata = {p.key: p.value for p in onnx.load(made["onnx"]).metadata_props}
    assert json.loads(metadata["class_names"]) == [str(i) for i in range(10)]
    assert json.loads(metadata["input_size"]) == [3, 32, 32]
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["mean"] == json.loads(metadata["mean"]) and len(provenance["std"]) == 3


# --- checkpoints load as plain data ----------------------------------------------------------
class Payload:
    """Unpickling this would create `marker`: the test checks it never exists."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_checkpoint_carrying_code_is_refused_and_never_runs(runs, tmp_path):
    from src.inference.trained import load_model, locate

    run = runs["logistic"]
    source = next((run["root"] / "run" / "checkpoints").glob("*.ckpt"))
    state = torch.load(source, weights_only=True)
    marker = tmp_path / "payload-ran"
    state["class_names"] = Payload(marker)
    folder = tmp_path / "output" / "checkpoints"
    folder.mkdir(parents=True)
    (tmp_path / "output" / "config.yaml").write_bytes(
        (run["root"] / "run" / "config.yaml").read_bytes()
    )
    torch.save(state, folder / "evil.ckpt")
    with pytest.raises(InvalidInput, match="refused, it holds more than plain data"):
        load_model(locate(None, str(folder / "evil.ckpt"), "sqlite:///unused.db"))
    assert not marker.exists()


@pytest.mark.parametrize("num_classes", [3, None])
def test_a_weights_file_carrying_code_is_refused_and_never_runs(tmp_path, num_classes):
    from src.backbones import create_backbone

    marker = tmp_path / "payload-ran"
    torch.save({"classifier.weight": Payload(marker)}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="refused, the file holds more than plain tensors"):
        create_backbone("mobilenetv2_100", num_classes, weights=str(tmp_path / "weights.pth"))
    assert not marker.exists()


def test_no_source_file_loads_without_weights_only():
    found = subprocess.run(
        ["grep", "-rn", "weights_only=False", str(ROOT / "src")], capture_output=True, text=True
    )
    assert found.stdout == ""


# --- multi-label predict ---------------------------------------------------------------------
@pytest.mark.slow
def test_multilabel_predict_uses_sigmoid_and_stored_thresholds(tmp_path):
    from tests.helpers.medmnist_files import write_medmnist_npz

    write_medmnist_npz(tmp_path / "medmnist", "chestmnist")
    overrides = tiny(
        "dataset=chestmnist",
        f"dataset.source.root={tmp_path / 'medmnist'}",
        "monitor.metric=val/auroc",
        "strategy=feature_extract",
        f"strategy.cache_dir={tmp_path / 'cache'}",
        without=(*WHOLE_SPLITS, "trainer.max_epochs"),
    )
    train(compose_train(tmp_path, overrides))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    thresholds = torch.load(checkpoint, weights_only=True)["state_dict"]["task.thresholds"]
    images = tmp_path / "xrays"
    images.mkdir()
    write_digit_images(images, 3)
    table = tmp_path / "labels.csv"
    cfg = compose_entry(
        "predict", tmp_path, [f"ckpt_path={checkpoint}", f"images={images}", f"csv={table}"]
    )
    tops = predict_images(cfg)
    rows = list(csv.DictReader(table.open()))
    names = [n for n in rows[0] if n not in ("file", "labels")]
    assert len(names) == 14 and len(rows) == 3
    for row, top in zip(rows, tops, strict=True):
        labels = set(row["labels"].split(";")) - {""}
        assert labels == {label for label, _ in top}  # the CSV says what was printed
        for name, threshold in zip(names, thresholds.tolist(), strict=True):
            p = float(row[name])  # a sigmoid, printed to 6 decimals
            assert 0 <= p <= 1
            if abs(p - threshold) > 1e-5:
                assert (name in labels) == (p >= threshold), (name, p, threshold)


# --- the advisor's jobs and command ----------------------------------------------------------
def test_the_users_dataset_node_becomes_overrides_of_every_job():
    from src.advise.jobs import node_overrides

    default = {"source": {"root": "???", "test_root": None}, "fraction": 1.0, "tags": [1]}
    given = {
        "source": {"root": "/data/my crops", "test_root": None, "x": True},
        "fraction": 0.5,
        "tags": [1, 2],
    }
    assert node_overrides("dataset", given, default) == [
        "dataset.source.root='/data/my crops'",
        "+dataset.source.x=true",
        "dataset.fraction=0.5",
        "dataset.tags=[1,2]",
    ]


def test_the_reproduce_command_keeps_only_what_differs_from_the_defaults():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.advise.jobs import command, minimal

    GlobalHydra.instance().clear()
    internal = ["trainer.enable_progress_bar=false", "dataset.num_workers=0", "paths.root_dir=/x"]
    overrides = [
        "backbone=mobilenetv2",
        "dataset=imagefolder",
        *internal,
        "logger.mlflow.log_model=false",
        "backbone.input_size=[3,48,48]",
        "dataset.source.root=/data/crops",
        "trainer.max_epochs=3",
        "test=true",
        "seed=42",
        "strategy=feature_extract",
        "strategy.C=0.5",
        "strategy.classifier=logistic",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        line = command(minimal(overrides))
    assert line == (
        "python -m src.train backbone=mobilenetv2 dataset=imagefolder backbone.input_size=[3,48,48] "
        "dataset.source.root=/data/crops trainer.max_epochs=3 strategy=feature_extract strategy.C=0.5"
    )


def test_a_pyfunc_with_this_projects_code_inside_pins_what_that_code_imports():
    """A KernelSVM head pickles as src.strategies.heads: loading it imports src's packages, so
    lightning, torchmetrics, omegaconf and filelock must be installed where it is served."""
    from src.inference.export import requirements

    plain = torch.nn.Sequential(torch.nn.Linear(4, 3))
    assert [r.split("==")[0] for r in requirements(plain)] == ["torch", "timm"]
    head = KernelSVM.__new__(KernelSVM)
    torch.nn.Module.__init__(head)
    with_head = torch.nn.Sequential(torch.nn.Linear(4, 3), head)
    names = {r.split("==")[0] for r in requirements(with_head)}
    assert {"torch", "timm", "lightning", "torchmetrics", "omegaconf", "filelock"} <= names


def test_best_is_the_checkpoint_modelcheckpoint_recorded_not_the_last_name(tmp_path):
    """save_top_k=3 leaves epoch09 (best) beside epoch10 and epoch100: eval, predict and export
    take the one last.ckpt records, and refuse to guess when there is no record."""
    from src.inference.trained import find_checkpoint

    for name in ("epoch09.ckpt", "epoch10.ckpt", "epoch100.ckpt"):
        torch.save({"state_dict": {}}, tmp_path / name)
    callbacks = {"ModelCheckpoint{'monitor': 'val/acc'}": {"best_model_path": "/old/epoch09.ckpt"}}
    torch.save({"state_dict": {}, "callbacks": callbacks}, tmp_path / "last.ckpt")
    assert find_checkpoint(tmp_path, "best") == tmp_path / "epoch09.ckpt"
    assert find_checkpoint(tmp_path, "last") == tmp_path / "last.ckpt"
    (tmp_path / "last.ckpt").unlink()
    with pytest.raises(InvalidInput, match="3 checkpoints .* no record of which is best"):
        find_checkpoint(tmp_path, "best")
    (tmp_path / "epoch10.ckpt").unlink(), (tmp_path / "epoch100.ckpt").unlink()
    assert find_checkpoint(tmp_path, "best") == tmp_path / "epoch09.ckpt"


def test_best_after_a_resume_without_last_ckpt_is_what_the_newest_checkpoint_records(tmp_path):
    """save_last=false (the studies), killed after epoch02 was the best, resumed from it:
    Lightning keeps the file it resumed from beside the new best epoch03, and no last.ckpt
    exists. The checkpoint written last (highest global step) records which is best."""
    from src.inference.trained import find_checkpoint

    key = "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max'}"

    def save(name: str, step: int, best: str) -> None:
        callbacks = {key: {"best_model_path": f"/elsewhere/{best}", "best_k_models": {}}}
        state = {"state_dict": {}, "global_step": step, "callbacks": callbacks}
        torch.save(state, tmp_path / name)

    save("epoch02.ckpt", 468, "epoch02.ckpt")
    save("epoch03.ckpt", 624, "epoch03.ckpt")
    assert find_checkpoint(tmp_path, "best") == tmp_path / "epoch03.ckpt"
    save("epoch03.ckpt", 624, "epoch02.ckpt")  # top-k 2: the newer one says the older is best
    assert find_checkpoint(tmp_path, "best") == tmp_path / "epoch02.ckpt"


def test_a_file_that_is_not_a_training_checkpoint_is_refused_in_one_line(tmp_path):
    from src.inference.trained import load_checkpoint

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(InvalidInput, match="not a readable checkpoint"):
        load_checkpoint(text)
    bare = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), bare)
    with pytest.raises(InvalidInput, match="not a checkpoint of src.train .*backbone.weights="):
        load_checkpoint(bare)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logistic", "linear", "svm"])
def test_the_checkpoint_in_mlflow_is_the_whole_model_as_on_disk(runs, kind, tmp_path):
    """logger.mlflow.log_model uploads the run's checkpoint: for every head, the file that holds
    backbone + head (written after the head was fitted), byte for byte the one eval loads."""
    run = runs[kind]
    client = MlflowClient(f"sqlite:///{run['root']}/mlflow.db")
    output_dir = Path(client.get_run(run["run_id"]).data.tags["output_dir"])
    local = output_dir / "checkpoints" / "last.ckpt"
    uploaded = Path(client.download_artifacts(run["run_id"], "last/last.ckpt", str(tmp_path)))
    assert uploaded.read_bytes() == local.read_bytes()
    assert "head" in torch.load(uploaded, map_location="cpu", weights_only=True)
