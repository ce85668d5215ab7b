"""An MLflow run's lifecycle, for every run that is not a Lightning logger's (similarity, report,
advise, sweep parents): the experiment, a new or reopened run, its params, and its end status.
Each caller keeps only its own tags and artifacts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param

from src.tracking.store import experiment_id  # created as a model-training experiment

__all__ = [
    "experiment_id",
    "flatten",
    "log_params",
    "mlflow_run",
    "reopen",
    "run_status",
    "start_run",
]

log = logging.getLogger(__name__)


def start_run(
    client: MlflowClient,
    experiment: str,
    artifact_location: str | None,
    run_name: str,
    tags: dict[str, str],
) -> str:
    """A new RUNNING run in `experiment`; returns its id."""
    run = client.create_run(
        experiment_id(client, experiment, artifact_location), run_name=run_name, tags=tags
    )
    return run.info.run_id


def reopen(client: MlflowClient, run_id: str) -> str:
    """An earlier run, RUNNING again (a re-run or another worker continues it)."""
    client.update_run(run_id, status="RUNNING")
    return run_id


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}, the separator Lightning's MLflow logger uses for params."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def best_metric(client: MlflowClient, run_id: str, metric: str = "val/acc") -> float | None:
    """The best value of a run's validation curve, maximised: the kept checkpoint's score when
    the checkpoint monitors it (what a search must rank by), not the last epoch's."""
    history = client.get_metric_history(run_id, metric)
    return max(m.value for m in history) if history else None


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """A nested dict as flat params ("a/b"), each value cut to MLflow's 6000 characters."""
    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


@contextmanager
def run_status(client: MlflowClient, run_id: str) -> Iterator[None]:
    """The run ends FINISHED; FAILED with the error as the `error` tag; KILLED on SIGTERM or
    Ctrl-C with the signal as `killed_reason`, as a training run's (src.tracking.loggers)."""
    try:
        yield
    except BaseException as error:
        from src.errors import is_sigterm
        from src.tracking.claim import KILLED_REASON

        if isinstance(error, KeyboardInterrupt | SystemExit):
            reason = "SIGTERM" if is_sigterm(error) else type(error).__name__  # as training's
            client.set_tag(run_id, KILLED_REASON, reason)
            client.set_terminated(run_id, "KILLED")
        else:
            client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


@contextmanager
def mlflow_run(
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
) -> Iterator[tuple[MlflowClient, str]]:
    """A new MLflow run with its tags and params that ends FINISHED, or FAILED/KILLED with the
    error as a tag."""
    from src.tracking.store import prepare_store

    # A training sweep may open the same fresh sqlite store at once: migrate it under the lock.
    prepare_store(tracking_uri, experiment, artifact_location)
    client = MlflowClient(tracking_uri)
    run_id = start_run(client, experiment, artifact_location, run_name, tags)
    log_params(client, run_id, params)
    log.info("MLflow run %s (%s) in %s", run_id, experiment, tracking_uri)
    with run_status(client, run_id):
        yield client, run_id
