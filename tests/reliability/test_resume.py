"""SIGKILL in the middle of epoch 3 of 5, then `resume=auto`: the same MLflow run ends FINISHED with
exactly one val point per epoch, and the weights equal an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from tests.helpers.jobs import launch

pytestmark = pytest.mark.slow  # three training processes


def weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_mid_epoch_then_resume_auto_finishes_the_same_run(tmp_path):
    straight = launch(tmp_path, "straight", "a")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = launch(tmp_path, "killed", "b", kill_at="2:1")  # third epoch, second batch
    assert killed.returncode == -9, killed.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("killed")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "RUNNING"  # SIGKILL left no chance to say otherwise

    resumed = launch(tmp_path, "killed", "c", extra=["resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the same run, no second one
    assert runs[0].info.status == "FINISHED"
    for key in ("val/acc", "val/loss", "val/f1_macro"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == sorted({m.step for m in history})
        assert len(history) == 5, (key, [(m.step, m.value) for m in history])

    expected = weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    actual = weights(
        tmp_path / "b" / "checkpoints" / "last.ckpt"
    )  # resumed in the killed run's folder
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
