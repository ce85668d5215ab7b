"""Ctrl-C during training: the run ends KILLED, its last checkpoint stays, and resume=auto picks
it up in the same MLflow run."""

from __future__ import annotations

import signal
import subprocess
import time

import mlflow
import pytest

from tests.helpers.jobs import ROOT, cli_train, default_signals, launch

pytestmark = pytest.mark.slow  # two training processes


def test_ctrl_c_ends_killed_keeps_the_checkpoint_and_resumes(tmp_path):
    command, env = cli_train(tmp_path, "interrupted", "b")
    env["TRANSFERLAB_STEP_SLEEP"] = "0.5"  # slow enough to be caught mid-training
    running = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals
    )
    checkpoint = tmp_path / "b" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and running.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint was written in time"
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=300)
    assert running.returncode != 0

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("interrupted").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "KILLED", stderr[-2000:]
    assert checkpoint.exists()

    resumed = launch(tmp_path, "interrupted", "c", extra=["resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = client.search_runs([experiment])
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 5
