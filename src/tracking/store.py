"""Open the MLflow store and the run's experiment before any logger does, one process at a time.

Several jobs starting at once on a fresh sqlite store race on MLflow's schema migration ("Online
migration expected to match one row") and on creating the experiment. A file lock beside the
database serialises that first step; afterwards sqlite's own locking (WAL mode, a busy timeout)
copes with parallel writers. Many machines writing at once want a tracking server with PostgreSQL
instead (see README, Scale-out).
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

SQLITE = "sqlite:///"
# MLflow 3 opens an experiment without this tag on its GenAI page (traces); ours train models,
# so the UI should open on the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (tagged as model development) when missing; an
    experiment created before the tag existed gets it too, so old stores open on their runs."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags=EXPERIMENT_KIND
            )
        except MlflowException:  # another process created it first: fine
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) is None:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def store_dir(tracking_uri: str, default: str) -> str:
    """The folder beside the tracking store, where artifacts and caches go by default (OmegaConf
    resolver `store_dir`): a sqlite file's folder, a file store itself, else `default`."""
    if tracking_uri.startswith(SQLITE):
        return str(Path(tracking_uri[len(SQLITE) :]).parent)
    if tracking_uri.startswith("file://"):
        return str(Path(tracking_uri[len("file://") :]))
    if "://" not in tracking_uri and tracking_uri:  # a bare path is a file store
        return str(Path(tracking_uri))
    return default


def prepare_store(tracking_uri: str, experiment_name: str, artifact_location: str | None) -> None:
    from mlflow.tracking import MlflowClient

    lock = None
    if tracking_uri.startswith(SQLITE):
        database = Path(tracking_uri[len(SQLITE) :])
        database.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{database}.lock", timeout=300)
        lock.acquire()
    try:
        client = MlflowClient(tracking_uri)  # creates or migrates the schema
        if tracking_uri.startswith(SQLITE):
            _wal_mode(tracking_uri[len(SQLITE) :])
        experiment_id(client, experiment_name, artifact_location)
    finally:
        if lock is not None:
            lock.release()


def _wal_mode(database: str) -> None:
    """Readers no longer block the writer (persistent: set once per database file)."""
    import sqlite3

    with sqlite3.connect(database, timeout=60) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def done_line(run_id: str | None, outputs, tracking_uri: str | None = None) -> str:
    """An entry point's last log line: the MLflow run every later tool takes, and the folder."""
    where = f" in {tracking_uri}" if tracking_uri else ""
    run = f"MLflow run {run_id}{where}" if run_id else "no MLflow run"
    return f"Done: {run}; outputs in {outputs}"
