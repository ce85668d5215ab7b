"""Distributed sweeps as docs/cluster.md sets them up: workers share one Optuna study on a real
PostgreSQL server and log to one `mlflow server` (PostgreSQL backend store, artifact destination),
all on loopback. Each worker is a real `python -m src.train -m ...` process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from src.sweeps.runs import RUN_ATTR
from src.sweeps.study import WORKER_ATTR, open_storage
from tests.helpers.jobs import ROOT, TINY_TRIAL, child_env
from tests.helpers.servers import create_database

pytestmark = pytest.mark.slow  # real PostgreSQL, mlflow server and worker processes

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sweep_overrides(name: str, n_trials: int) -> list[str]:
    return [
        "hparams_search=lr_wd",
        "paths=cluster",
        f"experiment_name={name}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={n_trials}",
        "trainer.max_epochs=1",
        # Seconds, not minutes, so a dead worker is noticed within the test (a grace period
        # long enough that a live worker on a starved machine still beats in time).
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=10",
    ]


# `python -m src.train` on a machine of another name: the sweep tells workers apart by hostname.
AS_HOST = (
    "import os, runpy, socket, sys; host = os.environ.pop('WORKER_HOST'); "
    "socket.gethostname = lambda: host; "
    "runpy.run_module('src.train', run_name='__main__', alter_sys=True)"
)


def start_worker(
    tmp_path: Path, env: dict[str, str], overrides: list[str], log: str, host: str | None = None
) -> subprocess.Popen:
    """A sweep worker; with `host`, as if on another machine of that name: its death cannot be
    seen from here (no pid to check), only its heartbeat going silent."""
    start = ["-c", AS_HOST] if host else ["-m", "src.train"]
    command = [sys.executable, *start, "-m", *TINY_TRIAL, f"paths.root_dir={tmp_path}", *overrides]
    environment = child_env(**env, OMP_NUM_THREADS="1")  # the cluster's MLflow server and study
    if host:
        environment["WORKER_HOST"] = host
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=(tmp_path / log).open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(tmp_path: Path, worker: subprocess.Popen, log: str) -> str:
    code = worker.wait(timeout=900)  # minutes only on a starved machine: ~30 s on a quiet one
    text = (tmp_path / log).read_text()
    assert code == 0, text[-4000:]
    return text


def cluster(postgres, tracking_server, name: str) -> tuple[dict[str, str], MlflowClient]:
    """The two settings every worker needs (docs/cluster.md), for a study of its own."""
    url, _ = tracking_server
    env = {"MLFLOW_TRACKING_URI": url, "OPTUNA_STORAGE": create_database(postgres, name)}
    return env, MlflowClient(url)


def runs_of(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


# --- Done when 2: two workers, one study on PostgreSQL, one MLflow server --------------------------
def test_two_workers_share_a_postgres_study_and_an_mlflow_server(
    tmp_path, postgres, tracking_server
):
    env, client = cluster(postgres, tracking_server, "share")
    overrides = sweep_overrides("share", n_trials=4)
    workers = [start_worker(tmp_path, env, overrides, f"w{i}.log") for i in range(2)]
    logs = [finish(tmp_path, worker, f"w{i}.log") for i, worker in enumerate(workers)]

    study = optuna.load_study(study_name="share", storage=env["OPTUNA_STORAGE"])
    assert len(study.trials) == 4 and all(t.state in FINISHED for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    # Each worker its own sampler seed: the study's seed (42) for the first, +1 for the next.
    seeds = sorted(re.search(r"worker (\d), sampler \w+ seed (\d+)", t).groups() for t in logs)
    assert seeds == [("0", "42"), ("1", "43")]

    parents, children = runs_of(client, "share")
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {t.user_attrs[RUN_ATTR] for t in study.trials} == {c.info.run_id for c in children}
    assert all(c.info.status == "FINISHED" for c in children)
    assert parents[0].info.status == "FINISHED"
    # Artifacts went through the server into its destination, not into a worker's folder.
    _, artifacts = tracking_server
    assert all(c.info.artifact_uri.startswith("mlflow-artifacts:") for c in children)
    assert len(list(artifacts.rglob("config.yaml"))) >= 4
    assert not (tmp_path / "mlartifacts").exists()


# --- Done when 3: a worker dies mid-trial; heartbeat fails its trial, the other retries it ---------
def test_a_killed_workers_trial_fails_by_heartbeat_and_is_retried(
    tmp_path, postgres, tracking_server
):
    env, client = cluster(postgres, tracking_server, "killed")
    overrides = sweep_overrides("killed", n_trials=3)
    survivor = start_worker(tmp_path, env, overrides, "a.log")
    doomed = start_worker(tmp_path, env, overrides, "b.log", host="worker-b")
    victim = wait_for_training_trial(env["OPTUNA_STORAGE"], "killed", "worker-b:", doomed, tmp_path)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    text = finish(tmp_path, survivor, "a.log")

    study = optuna.load_study(study_name="killed", storage=env["OPTUNA_STORAGE"])
    dead = study.trials[victim]
    assert dead.state == TrialState.FAIL
    assert f"Trial {victim}: no heartbeat from worker-b:" in text
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.system_attrs[WORKER_ATTR].startswith(f"{socket.gethostname()}:")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3
    # The dead job's run says so; the retry has a run of its own.
    assert client.get_run(dead.user_attrs[RUN_ATTR]).info.status == "KILLED"
    assert retry.user_attrs[RUN_ATTR] != dead.user_attrs[RUN_ATTR]
    assert client.get_run(retry.user_attrs[RUN_ATTR]).info.status == "FINISHED"


def wait_for_training_trial(storage: str, name: str, owner: str, worker, tmp_path: Path) -> int:
    """The number of a trial `owner` is training right now (its job has opened its MLflow run)."""
    deadline = time.monotonic() + 600
    storage = open_storage(storage)  # one connection pool for all the polling
    while time.monotonic() < deadline:
        assert worker.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.2)
            continue
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if trial.system_attrs.get(WORKER_ATTR, "").startswith(owner) and RUN_ATTR in (
                trial.user_attrs
            ):
                return trial.number
        time.sleep(0.2)
    raise AssertionError((tmp_path / "b.log").read_text()[-3000:])


# --- Done when 4: a DDP trial in a sweep: both ranks train the trial's hyperparameters ------------
def test_a_ddp_trial_trains_both_ranks_with_the_same_hyperparameters(
    tmp_path, postgres, tracking_server
):
    env, client = cluster(postgres, tracking_server, "ddp")
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    worker = start_worker(tmp_path, env, [*sweep_overrides("ddp", n_trials=1), *ddp], "ddp.log")
    text = finish(tmp_path, worker, "ddp.log")

    (trial,) = optuna.load_study(study_name="ddp", storage=env["OPTUNA_STORAGE"]).trials
    assert trial.state == TrialState.COMPLETE
    assert text.count("DDP rank 1 follows trial 0") == 1
    run = client.get_run(trial.user_attrs[RUN_ATTR])
    # Each rank's fingerprint of its composed config (every hyperparameter, the trial's sampled
    # values among them), exchanged before training: two ranks, one config, the run's own.
    assert run.data.tags["ddp.world_size"] == "2"
    assert run.data.tags["ddp.config_fingerprints"] == ",".join(
        [run.data.tags["config_fingerprint"]] * 2
    )
    for key, value in trial.params.items():
        assert float(run.data.params[key.replace(".", "/")]) == value
