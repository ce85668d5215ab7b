"""The pieces of a resume that cannot lose or double a run, each on its own (seconds): the
checkpoint chosen, the lock, the points a resumed run logs, the tags it keeps, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from src.errors import SIGTERM_EXIT, Terminated, is_sigterm, sigterm_raises
from src.tracking.claim import RunLock, loadable_checkpoint
from src.tracking.resume import (
    ResumePoint,
    config_difference,
    find_resume_point,
    reopen,
)
from tests.helpers.faults import HOLD_LOCK
from tests.helpers.jobs import ROOT


def _checkpoint(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "loops": {}, "epoch": epoch}, path)


def test_the_newest_loadable_checkpoint_is_chosen(tmp_path):
    folder = tmp_path / "checkpoints"
    assert loadable_checkpoint(tmp_path) is None
    _checkpoint(folder / "epoch00.ckpt", 0)
    assert loadable_checkpoint(tmp_path).name == "epoch00.ckpt"  # killed before last.ckpt
    time.sleep(0.01)
    _checkpoint(folder / "epoch01.ckpt", 1)
    _checkpoint(folder / "last.ckpt", 2)
    assert loadable_checkpoint(tmp_path).name == "last.ckpt"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # cut short
    assert loadable_checkpoint(tmp_path).name == "epoch01.ckpt"
    (folder / "epoch01.ckpt").write_bytes(b"")
    assert loadable_checkpoint(tmp_path).name == "epoch00.ckpt"


def test_a_run_lock_is_held_by_one_process_and_freed_when_it_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    assert not RunLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path)
    assert lock.acquire()  # the OS dropped the dead holder's lock
    assert not RunLock(tmp_path).acquire()  # and now this process holds it
    lock.release()


def test_a_resumed_run_logs_only_steps_it_does_not_have(tmp_path):
    from src.tracking.loggers import TrainingMLFlowLogger

    logger = TrainingMLFlowLogger("x", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logger.skip_recorded({"val/acc": {9}})
    logger.log_metrics({"val/acc": 0.5, "val/loss": 1.0}, 9)
    logger.log_metrics({"val/acc": 0.6}, 19)
    logger.log_metrics({"epoch": 1.0}, None)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(logger.run_id, key)]
        for key in ("val/acc", "val/loss", "epoch")
    }
    assert history == {"val/acc": [(19, 0.6)], "val/loss": [(9, 1.0)], "epoch": [(0, 1.0)]}


def test_config_difference_names_the_keys():
    text = config_difference(
        {"optimizer/lr": "0.001", "regularisation/name": "default", "paths/root_dir": "/a"},
        {"optimizer/lr": "0.05", "regularisation/name": "none", "paths/root_dir": "/b"},
    )
    assert "optimizer/lr: 0.001 -> 0.05" in text and "regularisation/name: default -> none" in text
    assert "paths" not in text


def test_reopen_clears_the_interruption_tags(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("x"))
    run_id = run.info.run_id
    client.set_tag(run_id, "error", "SIGTERMException: ")
    client.set_tag(run_id, "killed_reason", "SIGTERM")
    client.log_metric(run_id, "val/acc", 0.5, step=3)
    client.set_terminated(run_id, "KILLED")

    from src.tracking.loggers import TrainingMLFlowLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = TrainingMLFlowLogger("x", tracking_uri=uri, run_id=run_id)
    reopen(logger, ResumePoint(run_id, tmp_path, tmp_path / "last.ckpt"))
    logger.log_metrics({"val/acc": 0.9}, 3)
    logger.log_metrics({"val/acc": 0.7}, 6)
    after = client.get_run(run_id)
    assert after.info.status == "RUNNING" and after.data.tags["resumed_from"] == "last.ckpt"
    assert "error" not in after.data.tags and "killed_reason" not in after.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/acc")] == [
        (3, 0.5),
        (6, 0.7),
    ]


def test_a_dead_run_without_a_checkpoint_ends_killed_with_the_reason(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    output = tmp_path / "dead"
    output.mkdir()
    (output / "run.lock").touch()  # its process took the lock, then died
    tags = {"config_fingerprint": "f" * 16, "output_dir": str(output), "host": "h", "pid": "1"}
    run = client.create_run(client.create_experiment("x"), tags=tags)
    assert find_resume_point("auto", uri, "x", "f" * 16, None) is None
    dead = client.get_run(run.info.run_id)
    assert dead.info.status == "KILLED"
    assert "no loadable checkpoint" in dead.data.tags["killed_reason"]


def test_sigterm_outside_lightning_raises_terminated_and_exits_143():
    assert SIGTERM_EXIT == 143
    with pytest.raises(Terminated) as stopped, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert stopped.value.code == 143 and is_sigterm(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_a_run_is_not_finished_before_its_test_has_run(tmp_path):
    """Lightning ends the MLflow run FINISHED after fit; killed during the test, it would stay
    FINISHED without test scores. The job finishes it itself, at the end."""
    from src.tracking.loggers import TrainingMLFlowLogger, finish_at_the_end

    logger = TrainingMLFlowLogger("x", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logger.log_metrics({"val/acc": 0.5}, step=1)
    finish = finish_at_the_end([logger])
    logger.finalize("success")  # what Lightning does when fit ends
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    finish()
    assert client.get_run(logger.run_id).info.status == "FINISHED"


def test_is_sigterm_knows_lightnings_and_no_other_exit():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    assert is_sigterm(SIGTERMException()) and is_sigterm(Terminated())
    assert not is_sigterm(SystemExit(0)) and not is_sigterm(SystemExit(2))
