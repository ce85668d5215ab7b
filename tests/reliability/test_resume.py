"""SIGKILL in the middle of epoch 3 of 5, then `resume=auto`: the same MLflow run ends FINISHED with
exactly one val point per epoch, and the weights equal an uninterrupted run's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import torch

from tests.reliability.test_fault_matrix import default_signals

ROOT = Path(__file__).resolve().parents[2]


def launch(tmp: Path, name: str, launch_dir: str, extra=(), kill_at: str | None = None):
    command, env = job(tmp, name, launch_dir, extra)
    if kill_at:
        env["TRANSFERLAB_KILL_AT"] = kill_at
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=default_signals,
    )  # fmt: skip


def job(tmp: Path, name: str, launch_dir: str, extra=()) -> tuple[list[str], dict]:
    """The command line of a small real job (5 epochs of digits) and its environment."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PROJECT_ROOT"] = str(ROOT)
    command = [
        sys.executable, "-m", "src.train",
        "dataset=digits", "backbone.input_size=[3,32,32]", "dataset.num_workers=0",
        "trainer.max_epochs=5", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "test=false", "logger.mlflow.log_model=false",
        f"experiment_name={name}", f"paths.root_dir={tmp}", f"hydra.run.dir={tmp / launch_dir}",
        "+callbacks.kill._target_=tests.reliability.faults.KillFromEnv",
        *extra,
    ]  # fmt: skip
    return command, env


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
