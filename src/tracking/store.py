"""Open the MLflow store and the run's experiment before any logger does, one process at a time.

Several jobs starting at once on a fresh sqlite store race on MLflow's schema migration ("Online
migration expected to match one row") and on creating the experiment. A file lock beside the
database serialises that first step; afterwards sqlite's own locking (WAL mode, a busy timeout)
copes with parallel writers. Many machines writing at once want a tracking server with PostgreSQL
instead (see README, Scale-out).
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from filelock import FileLock

SQLITE = "sqlite:///"


def prepare_store(tracking_uri: str, experiment_name: str, artifact_location: str | None) -> None:
    from mlflow.exceptions import MlflowException
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
        if client.get_experiment_by_name(experiment_name) is None:
            with suppress(MlflowException):  # another machine created it first: fine
                client.create_experiment(experiment_name, artifact_location=artifact_location)
    finally:
        if lock is not None:
            lock.release()


def _wal_mode(database: str) -> None:
    """Readers no longer block the writer (persistent: set once per database file)."""
    import sqlite3

    with sqlite3.connect(database, timeout=60) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
