"""MedMNIST through the real loader from files in the official .npz layout, multi-label as a task
(loss, metrics against scikit-learn, thresholds from validation), and the refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from medmnist import INFO

from src.data.medmnist import medmnist
from src.errors import AssetUnavailable, InvalidInput
from src.models.tasks import MultiLabel
from tests.helpers.compose import compose_train, only_run, train
from tests.helpers.jobs import ROOT, WHOLE_SPLITS, child_env, tiny
from tests.helpers.medmnist_files import write_medmnist_npz


def medmnist_job(tmp_path: Path, flag: str, *overrides: str):
    write_medmnist_npz(tmp_path / "medmnist", flag)
    monitor = ["monitor.metric=val/auroc"] if flag == "chestmnist" else []
    # The tiny job on a MedMNIST file, every batch of conf/trainer's epochs.
    job = tiny(
        f"dataset={flag}",
        f"dataset.source.root={tmp_path / 'medmnist'}",
        *monitor,
        *overrides,
        without=(*WHOLE_SPLITS, "trainer.max_epochs"),
    )
    return compose_train(tmp_path, job)


def test_the_loader_reads_the_official_layout(tmp_path):
    write_medmnist_npz(tmp_path, "chestmnist", size=64)
    write_medmnist_npz(tmp_path, "pathmnist")
    chest = medmnist("chestmnist", size=64, root=str(tmp_path))
    assert chest.multilabel and chest.pool.targets.shape == (60, 14)
    assert chest.classes[0] == "atelectasis" and len(chest.classes) == 14
    assert chest.pool.as_tensor().shape == (60, 1, 64, 64)  # grey: 3 channels on the device
    path = medmnist("pathmnist", root=str(tmp_path))
    assert not path.multilabel and path.pool.targets.shape == (60,)
    assert path.pool.as_tensor().shape == (60, 3, 28, 28)
    assert (len(path.val), len(path.test)) == (30, 30)  # the official splits, whole


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["pathmnist", "chestmnist"])
def test_one_fast_dev_run_epoch(tmp_path, flag):
    metrics = train(medmnist_job(tmp_path, flag, "trainer.fast_dev_run=true"))
    expected = (
        {"test/auroc", "test/ap", "test/f1_macro", "test/auroc_class/cardiomegaly"}
        if flag == "chestmnist"
        else {"test/acc", "test/balanced_acc", "test/auroc", "test/f1_class/adipose"}
    )
    assert expected <= set(metrics), sorted(metrics)
    assert all(np.isfinite(metrics[k]) for k in expected)


@pytest.mark.slow
def test_multilabel_run_logs_per_label_metrics_and_tests_at_val_thresholds(tmp_path):
    cfg = medmnist_job(
        tmp_path,
        "chestmnist",
        "trainer.max_epochs=1",
        "dataset.class_weights=auto",
        "regularisation.label_smoothing=0.1",  # the BCE form
    )
    train(cfg)
    logged = only_run(cfg).data.metrics
    for stage in ("val", "test"):
        for kind in ("auroc", "ap", "f1"):
            assert f"{stage}/{kind}_class/hernia" in logged
    assert {"val/auroc", "test/auroc", "test/ap", "test/f1_macro"} <= set(logged)
    names = list(INFO["chestmnist"]["label"].values())
    thresholds = torch.tensor([logged[f"val/threshold/{name}"] for name in names])
    assert ((thresholds >= 0) & (thresholds <= 1)).all()
    # The best checkpoint (tested) carries the thresholds of its own validation epoch.
    checkpoint = torch.load(
        next((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")), weights_only=True
    )
    assert torch.allclose(checkpoint["state_dict"]["task.thresholds"], thresholds, atol=1e-6)


def logits_of(probs: np.ndarray) -> torch.Tensor:
    return torch.logit(torch.tensor(probs, dtype=torch.float32))


def test_multilabel_metrics_equal_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(3)
    target = (rng.random((50, 4)) < 0.4).astype(int)
    probs = np.clip(0.35 * target + 0.65 * rng.random((50, 4)), 0.01, 0.99).round(3)
    task = MultiLabel(["a", "b", "c", "d"])
    task.collected["test"].update(logits_of(probs), torch.tensor(target))
    logged = task.epoch_end("test", sanity_checking=False)
    assert logged["test/auroc"].item() == pytest.approx(roc_auc_score(target, probs), abs=1e-5)
    assert logged["test/ap"].item() == pytest.approx(
        average_precision_score(target, probs), abs=1e-5
    )
    per_label_auroc = roc_auc_score(target, probs, average=None)
    per_label_ap = average_precision_score(target, probs, average=None)
    for i, name in enumerate("abcd"):
        assert logged[f"test/auroc_class/{name}"].item() == pytest.approx(per_label_auroc[i], 1e-5)
        assert logged[f"test/ap_class/{name}"].item() == pytest.approx(per_label_ap[i], 1e-5)


def test_thresholds_maximise_validation_f1_and_score_the_test():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(4)
    target = (rng.random((60, 3)) < 0.3).astype(int)
    probs = np.clip(0.3 * target + 0.7 * rng.random((60, 3)), 0.01, 0.99).round(3)
    task = MultiLabel(["a", "b", "c"])
    task.collected["val"].update(logits_of(probs), torch.tensor(target))
    task.epoch_end("val", sanity_checking=False)
    for label in range(3):
        best = max(f1_score(target[:, label], probs[:, label] >= t) for t in probs[:, label])
        chosen = probs[:, label] >= task.thresholds[label].item()
        assert f1_score(target[:, label], chosen) == pytest.approx(best, abs=1e-6)
    test_target = (rng.random((40, 3)) < 0.3).astype(int)
    test_probs = rng.random((40, 3)).round(3)
    task.collected["test"].update(logits_of(test_probs), torch.tensor(test_target))
    logged = task.epoch_end("test", sanity_checking=False)
    decided = test_probs >= task.thresholds.numpy()
    expected = f1_score(test_target, decided, average="macro", zero_division=0)
    assert logged["test/f1_macro"].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["regularisation=strong"], "cannot mix multi-label"),
        (["monitor.metric=val/acc"], "monitor.metric=val/acc is not logged for a multi-label"),
        (["dataset.sampler=balanced"], "dataset.class_weights=auto"),
        (["dataset.samples_per_class=10"], "Use dataset.fraction"),
    ],
)
def test_multilabel_refusals_come_before_any_run(tmp_path, overrides, fragment):
    cfg = medmnist_job(tmp_path, "chestmnist", *overrides)
    with pytest.raises(InvalidInput, match=fragment):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists() or not mlflow.MlflowClient(
        cfg.paths.tracking_uri
    ).search_experiments(filter_string="name = 'transferlab'")


@pytest.mark.slow
def test_feature_extract_fits_one_classifier_per_label(tmp_path):
    cfg = medmnist_job(tmp_path, "chestmnist", "strategy=feature_extract", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert np.isfinite(metrics["test/auroc"]) and "test/f1_class/edema" in metrics


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"train_images": np.zeros((5, 28, 28), np.float32)}, "expected uint8 (28, 28, 3)"),
        ({"val_labels": np.full((30, 1), 9, np.uint8)}, "values outside [0, 8]"),
        ({"test_labels": np.zeros((30, 14), np.uint8)}, "expected integers (30, 1)"),
    ],
)
def test_a_file_in_the_wrong_layout_is_refused(tmp_path, change, fragment):
    path = write_medmnist_npz(tmp_path, "pathmnist")
    arrays = dict(np.load(path))
    np.savez(path, **{**arrays, **change})
    with pytest.raises(ValueError) as refused:
        medmnist("pathmnist", root=str(tmp_path))
    assert fragment in str(refused.value) and str(path) in str(refused.value)


def test_missing_file_names_the_path_and_the_url(tmp_path):
    with pytest.raises(AssetUnavailable) as missing:
        medmnist("dermamnist", size=64, root=str(tmp_path))
    message = str(missing.value)
    assert str(tmp_path / "dermamnist_64.npz") in message
    assert "zenodo.org" in message and "dataset.source.download=true" in message


@pytest.mark.slow
def test_command_line_offline_without_files_exits_2_with_the_path(tmp_path):
    # HOME points medmnist's default cache (~/.medmnist) at an empty folder.
    env = child_env(HOME=str(tmp_path))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "dataset=pathmnist",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert f"MedMNIST file not found: {tmp_path}/.medmnist/pathmnist.npz" in output
    assert "put it at" in output and "Traceback" not in output
    assert not (tmp_path / "mlflow.db").exists()
