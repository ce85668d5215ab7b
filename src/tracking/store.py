"""Open the MLflow store and the run's experiment before any logger does, one process at a time.

Several jobs starting at once on a fresh sqlite store race on MLflow's schema migration ("Online
migration expected to match one row") and on creating the experiment. A file lock beside the
database serialises that first step; afterwards sqlite's own locking (WAL mode, a busy timeout)
copes with parallel writers. Many machines writing at once want a tracking server with PostgreSQL
instead (see README, Scale-out).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

SQLITE = "sqlite:///"
# Config keys that hold a file, folder or URL: they differ per run (output folders) or say where,
# not what, so MLflow gets them as tags; as params they would fill the compare view's plots.
PATH_KEY = re.compile(r"(^|[/_])(dir|dirpath|path|root|location|uri|file|storage|ckpt_path)$")
# MLflow 3 opens an experiment without this tag on its GenAI page (traces); ours train models,
# so the UI should open on the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The runs table a researcher compares in: MLflow's shared view state (an experiment tag that the
# URL's viewStateShareKey names) with the scores and the tags that tell runs apart as columns.
RUNS_VIEW = "runs"
RUNS_COLUMNS = [
    "attributes.`Dataset`",
    "metrics.`val/acc`",
    "metrics.`test/acc`",
    "tags.`kind`",
    "tags.`strategy`",
    "tags.`dataset`",
    "tags.`fraction`",
    "tags.`seed`",
    "tags.`backbone`",
]


def experiment_tags() -> dict[str, str]:
    import json

    view = json.dumps({"selectedColumns": RUNS_COLUMNS})
    return {**EXPERIMENT_KIND, f"mlflow.sharedViewState.{RUNS_VIEW}": view}


def runs_url(base: str, experiment: str) -> str:
    """The MLflow UI page of an experiment's runs, in the model-training workspace, with the
    columns of RUNS_VIEW (MLflow 3 otherwise opens on GenAI traces, metrics hidden)."""
    query = f"workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}"
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs?{query}"


def experiment_id(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (tagged as model development) when missing; an
    experiment created before the tag existed gets it too, so old stores open on their runs."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags=experiment_tags()
            )
        except MlflowException:  # another process created it first: fine
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    tag_experiment(client, experiment)
    return experiment.experiment_id


def tag_experiment(client, experiment) -> None:
    """The tags of experiment_tags() that an experiment lacks (one made by an older version)."""
    for key, value in experiment_tags().items():
        if experiment.tags.get(key) is None:
            client.set_experiment_tag(experiment.experiment_id, key, value)


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


def check_tracking_uri(tracking_uri: str, key: str = "paths.tracking_uri") -> None:
    """Refuse a tracking URI MLflow cannot open, before any run, store or folder exists: an
    unknown scheme (`sqlit:///x.db`), a sqlite file in a place that is missing and cannot be
    created, or that this user cannot write, and the file store MLflow 3 refuses."""
    import os
    from urllib.parse import urlparse

    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    where = f"{key}='{tracking_uri}' (or MLFLOW_TRACKING_URI)"
    scheme = urlparse(tracking_uri).scheme
    # _registry: the schemes MLflow can open, plugins included; no public call lists them.
    schemes = sorted(s for s in _tracking_store_registry._registry if s not in ("", "file"))
    if scheme in ("", "file"):
        raise ValueError(
            f"{where}: MLflow 3 refuses the file store; use a database, e.g. "
            "sqlite:///mlflow.db, or a server (http://host:5000)."
        )
    if scheme not in schemes:
        raise ValueError(f"{where}: unknown scheme '{scheme}'; MLflow opens {', '.join(schemes)}.")
    if scheme in ("http", "https"):
        return check_server(tracking_uri, where)
    if scheme != "sqlite":
        return check_database_server(tracking_uri, where)
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
        raise ValueError(
            f"{where}: '{existing}' is not writable (permissions or a read-only disk)."
        )
    check_free_space(existing if existing.is_dir() else existing.parent, where)
    if existing == database:
        check_sqlite_store(database, where)


# Below this much free space a store cannot take a run's params, metrics and checkpoints' tags.
MIN_FREE_BYTES = 16 * 2**20
# How long the probe waits for another process's write to the store to end (MLflow's are short).
LOCK_WAIT_S = 10.0
SERVER_TIMEOUT_S = 5.0


def check_server(tracking_uri: str, where: str) -> None:
    """A tracking server answers its /health page within seconds, or is refused now (MLflow
    itself would retry for minutes, after the data and model were loaded)."""
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=SERVER_TIMEOUT_S) as answer:
            answer.read(64)
    except urllib.error.HTTPError as error:  # it answers, so it is up: MLflow reports the rest
        if error.code >= 500:
            raise ValueError(
                f"{where}: the server answers {error.code} ({error.reason})."
            ) from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ValueError(
            f"{where}: no MLflow server answers ({reason}); start one (make server) or point "
            "MLFLOW_TRACKING_URI at a running one."
        ) from None


# A database server's port when its URI names none (SQLAlchemy's dialects).
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database_server(tracking_uri: str, where: str) -> None:
    """A database server (postgresql://, mysql://) must accept a connection within seconds; its
    driver would otherwise fail with a traceback, or retry, after the data and model loaded."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(tracking_uri)
    dialect = parsed.scheme.split("+")[0]
    if not parsed.hostname:
        return  # a local socket path: the driver reports it
    port = parsed.port or DEFAULT_PORTS.get(dialect)
    if port is None:
        return
    try:
        socket.create_connection((parsed.hostname, port), timeout=SERVER_TIMEOUT_S).close()
    except OSError as error:
        raise ValueError(
            f"{where}: no {dialect} server answers at {parsed.hostname}:{port} ({error}); start "
            "it or fix the URI."
        ) from None


def check_free_space(folder: Path, where: str) -> None:
    import os

    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        raise ValueError(
            f"{where}: the disk holding '{folder}' is full ({free // 1024} KiB free); free space "
            "or put the store elsewhere."
        )


def check_sqlite_store(database: Path, where: str) -> None:
    """An existing file must be an MLflow sqlite store that this process can write now; probed
    with a write lock taken and rolled back, so the store is never changed by the probe."""
    import sqlite3

    with open(database, "rb") as file:
        header = file.read(16)
    if header and header != b"SQLite format 3\x00":
        raise ValueError(
            f"{where}: '{database}' is not an SQLite database (not an MLflow store); name a new "
            "file or an existing store."
        )
    if not header:
        return  # an empty file: MLflow makes it a store
    try:
        connection = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=LOCK_WAIT_S)
    except sqlite3.Error as error:
        raise ValueError(f"{where}: '{database}' cannot be opened ({error}).") from None
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if tables and not {"experiments", "runs"} <= tables:
            raise ValueError(
                f"{where}: '{database}' is an SQLite database but not an MLflow store (tables: "
                f"{', '.join(sorted(tables)[:8])}); name a new file or an existing store."
            )
        connection.execute("BEGIN IMMEDIATE")  # a write lock: what every MLflow write needs
        connection.rollback()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            raise ValueError(
                f"{where}: '{database}' is locked by another process for over {LOCK_WAIT_S:.0f}s; "
                "wait for it to end (or stop it) and run again."
            ) from None
        raise ValueError(f"{where}: '{database}' cannot be written ({error}).") from None
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{where}: '{database}' is a damaged database ({error}).") from None
    finally:
        connection.close()


def done_line(run_id: str | None, outputs, tracking_uri: str | None = None) -> str:
    """An entry point's last log line: the MLflow run every later tool takes, and the folder."""
    where = f" in {tracking_uri}" if tracking_uri else ""
    run = f"MLflow run {run_id}{where}" if run_id else "no MLflow run"
    return f"Done: {run}; outputs in {outputs}"


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    """mlflow's fluent API on `uri` for a moment; the caller's tracking URI (and the environment
    variable mlflow.set_tracking_uri exports) come back afterwards."""
    import os

    import mlflow

    before, variable = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def missing_sqlite_store(tracking_uri: str) -> Path | None:
    """The database file a sqlite:/// URI names, when it does not exist (opening it with MLflow
    would create an empty store); None for an existing file or another kind of store."""
    if not tracking_uri.startswith(SQLITE):
        return None
    database = Path(tracking_uri[len(SQLITE) :])
    return None if database.is_file() else database
