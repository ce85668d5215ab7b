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


def check_tracking_uri(tracking_uri: str, key: str = "paths.tracking_uri") -> None:
    """Refuse a tracking URI MLflow cannot open, before any run, store or folder exists: an
    unknown scheme (`sqlit:///x.db`), a sqlite file in a place that is missing and cannot be
    created, or that this user cannot write, and the file store MLflow 3 refuses."""
    import os
    from urllib.parse import urlparse

    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    where = f"{key}='{tracking_uri}' (or MLFLOW_TRACKING_URI)"
    scheme = urlparse(tracking_uri).scheme
    schemes = sorted(s for s in _tracking_store_registry._registry if s not in ("", "file"))
    if scheme in ("", "file"):
        raise ValueError(
            f"{where}: MLflow 3 refuses the file store; use a database, e.g. "
            "sqlite:///mlflow.db, or a server (http://host:5000)."
        )
    if scheme not in schemes:
        raise ValueError(f"{where}: unknown scheme '{scheme}'; MLflow opens {', '.join(schemes)}.")
    if scheme != "sqlite":
        return  # a server or database: only reachable over the network, checked when opened
    if not tracking_uri.startswith(SQLITE) or tracking_uri == SQLITE:
        raise ValueError(f"{where}: a sqlite store is sqlite:///relative.db or sqlite:////abs.db.")
    database = Path(tracking_uri[len(SQLITE) :])
    if database.is_dir():
        raise ValueError(f"{where}: '{database}' is a folder, not a database file.")
    existing = next(p for p in (database, *database.parents) if p.exists())
    if existing == database:
        writable = os.access(database, os.W_OK) and os.access(database.parent, os.W_OK)
    else:
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    if not writable:
        raise ValueError(f"{where}: '{existing}' is not writable by this user.")
