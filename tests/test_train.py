"""The main job end to end: one MLflow run with params, tags, per-epoch metrics, plots, checkpoint."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src.tracking.predictions import run_correctness
from tests.helpers.compose import artifact_paths, compose_train, train
from tests.helpers.jobs import tiny


def only_run(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_train_logs_one_complete_mlflow_run(tmp_path, tiny_overrides):
    metrics = train(compose_train(tmp_path, tiny_overrides))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert len(run.data.params) >= 20
    assert run.data.params["backbone/name"] == "tf_efficientnet_lite0"
    for tag in ("backbone", "strategy", "dataset", "fraction", "seed", "git_commit", "git_dirty"):
        assert tag in run.data.tags
    assert run.data.tags["strategy"] == "finetune" and run.data.tags["dataset"] == "digits"
    # The split sizes, as tags (the tiny job tests only 2 batches of its test split).
    correct = run_correctness(client, run.info.run_id, tmp_path / "downloads")
    assert int(run.data.tags["test_images"]) >= len(correct) == 128
    assert int(run.data.tags["train_images"]) > int(run.data.tags["val_images"]) > 0
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert (
        sorted(m.step for m in history) == sorted({m.step for m in history}) and len(history) == 2
    )
    for key in (
        "lr/stem",
        "lr/stage1",
        "lr/head",
        "val/f1_macro",
        "val/ece",
        "val/acc_top5",
        "val/acc_class/0",
        "test/acc",
        "test/f1_macro",
    ):
        assert key in run.data.metrics, key
    lrs = run.data.metrics
    assert lrs["lr/stem"] / lrs["lr/head"] == pytest.approx(0.1)
    assert not [k for k in lrs if k.endswith("_no_wd") or k.startswith("lr-")]  # one per group
    assert run.data.tags["kind"] == "train"
    # Paths are tags: the compare view plots params, and an output folder is no hyperparameter.
    assert "callbacks/model_checkpoint/dirpath" in run.data.tags
    assert not [k for k in run.data.params if k.endswith(("dir", "dirpath", "uri"))]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (dataset,) = run.inputs.dataset_inputs  # the UI's Datasets column
    profile = json.loads(dataset.dataset.profile)
    assert dataset.dataset.name == "digits" and len(dataset.dataset.digest) == 12
    assert profile["train_images"] > 0 and profile["test_images"] > 0 and profile["classes"] == 10
    assert profile["fraction"] == "1.0" and "samples_per_class" in profile
    artifacts = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "plots/learning_curves.png", "plots/confusion_test.png"} <= artifacts
    assert any(a.endswith(".ckpt") for a in artifacts), artifacts
    # Per-image test predictions: every tested image once (limit_test_batches=2 batches of 64 of
    # the split's images), and their accuracy is test/acc.
    assert "predictions/test_predictions.csv" in artifacts
    correct = run_correctness(client, run.info.run_id, tmp_path / "downloads")
    assert len(correct) == min(2 * 64, profile["test_images"])
    assert correct.mean() == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_exception_ends_the_run_failed_with_the_error(tmp_path, tiny_overrides, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr("src.models.module.TransferModule.training_step", explode)
    with pytest.raises(RuntimeError, match="boom"):
        train(compose_train(tmp_path, tiny_overrides))
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "boom in training_step" in run.data.tags["error"]


def test_bad_input_is_refused_before_any_run_exists(tmp_path, tiny_overrides):
    with pytest.raises(ValueError, match="dataset.fraction=2.0"):
        train(compose_train(tmp_path, [*tiny_overrides, "dataset.fraction=2.0"]))
    with pytest.raises(ValueError, match="not a timm model"):
        train(compose_train(tmp_path, [*tiny_overrides, "backbone.name=resnet05"]))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert (
        not (tmp_path / "mlflow.db").exists()
        or not mlflow.search_runs(search_all_experiments=True).shape[0]
    )


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "none"])
def test_train_runs_with_other_loggers(tmp_path, tiny_overrides, logger):
    metrics = train(
        compose_train(tmp_path, [*tiny_overrides, f"logger={logger}", "strategy=linear_probe"])
    )
    assert "test/acc" in metrics


@pytest.mark.slow
def test_resnet50_from_random_init_runs_offline(tmp_path):
    overrides = tiny(
        "backbone=resnet50",
        "backbone.pretrained=false",
        "trainer.max_epochs=1",
        "logger=none",
    )
    assert "test/acc" in train(compose_train(tmp_path, overrides))


@pytest.mark.slow
def test_the_returned_objective_is_the_kept_checkpoints_not_the_last_epochs(tmp_path):
    """A sweep ranks trials by what train() returns: the monitored value of the checkpoint that is
    tested and exported. A learning rate far too high makes val/loss best early, worst last."""
    overrides = tiny(
        "trainer.max_epochs=3",
        "monitor.metric=val/loss",
        "monitor.mode=min",
        "optimizer.lr=5.0",
        "scheduler=step",
    )
    cfg = compose_train(tmp_path, [*overrides, "test=false", "logger.mlflow.log_model=false"])
    returned = train(cfg)["val/loss"]
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(history) == 3 and history[-1] != min(history)
    assert returned == pytest.approx(min(history))


@pytest.mark.slow
def test_a_csv_logger_alone_gets_every_epoch_and_the_config(tmp_path, tiny_overrides):
    """Not only MLflow: the loggers join the Trainer after the checks (build_trainer, open_run),
    and a CSV logger alone records the same epochs and params with no MLflow store created."""
    import csv

    import yaml

    metrics = train(compose_train(tmp_path, [*tiny_overrides, "logger=csv"]))
    (folder,) = (tmp_path / "run" / "csv").iterdir()  # version_0
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    val = [row for row in rows if row.get("val/acc")]
    assert [int(row["epoch"]) for row in val] == [0, 1]
    # The returned val/acc is the kept (best) checkpoint's.
    assert max(float(row["val/acc"]) for row in val) == pytest.approx(metrics["val/acc"])
    params = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert params["backbone/name"] == "tf_efficientnet_lite0" and params["seed"] == 42
    assert not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
