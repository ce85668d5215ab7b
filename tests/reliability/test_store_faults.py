"""Tracking-store faults, each made for real, refused in one line before any work, the store
unchanged: a closed port, a file that is not a database, an SQLite file that is not an MLflow
store, a store another process holds locked, a full and a read-only filesystem (tmpfs mounts,
skipped with the reason where this machine cannot mount)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.tracking import store
from src.tracking.store import check_tracking_uri
from tests.helpers.jobs import tmpfs
from tests.helpers.servers import free_port


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Path:
    """A real MLflow sqlite store with one experiment (schema made by MLflow itself)."""
    from mlflow import MlflowClient

    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").create_experiment("e")
    return database


def refusal(uri: str) -> str:
    with pytest.raises(ValueError) as refused:
        check_tracking_uri(uri)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("paths.tracking_uri=")
    return message


def test_closed_port_is_refused_within_seconds():
    uri = f"http://127.0.0.1:{free_port()}"
    message = refusal(uri)
    start = time.monotonic()  # the probe alone (the first call also imports MLflow)
    with pytest.raises(ValueError):
        store.check_server(uri, "paths.tracking_uri")
    assert time.monotonic() - start < store.SERVER_TIMEOUT_S + 1
    assert "no MLflow server answers" in message and "Connection refused" in message


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    database = tmp_path / "notes.db"
    database.write_text("my thesis notes\n" * 100)
    before = digest(database)
    assert "is not an SQLite database" in refusal(f"sqlite:///{database}")
    assert digest(database) == before and sorted(tmp_path.iterdir()) == [database]


def test_an_sqlite_file_of_another_program_is_refused_untouched(tmp_path):
    import sqlite3

    database = tmp_path / "other.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
    before = digest(database)
    message = refusal(f"sqlite:///{database}")
    assert "not an MLflow store (tables: customers)" in message
    assert digest(database) == before


def test_a_store_locked_by_another_process_is_refused(mlflow_store, monkeypatch):
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.5)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SQLITE_LOCK, str(mlflow_store)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = digest(mlflow_store)
        assert "is locked by another process" in refusal(f"sqlite:///{mlflow_store}")
        assert digest(mlflow_store) == before
    finally:
        holder.kill()
        holder.wait()
    check_tracking_uri(f"sqlite:///{mlflow_store}")  # free again: accepted


# A second process holding sqlite's write lock, as a long transaction of another tool would.
HOLD_SQLITE_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/mnt (root and mount rights needed; skipped otherwise)."""
    with tmpfs(tmp_path / "mnt", "1m") as mount_point:
        yield mount_point


def test_a_store_on_a_full_disk_is_refused(small_tmpfs, mlflow_store):
    database = small_tmpfs / "mlflow.db"
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as file:  # fill the disk to the last block
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    message = refusal(f"sqlite:///{database}")
    assert "is full" in message and not database.exists()


def test_a_store_on_a_read_only_disk_is_refused_untouched(small_tmpfs, mlflow_store):
    database = small_tmpfs / "mlflow.db"
    shutil.copy(mlflow_store, database)
    before = digest(database)
    remount = ["mount", "-o", "remount,ro", str(small_tmpfs)]
    if subprocess.run(remount, capture_output=True).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    assert "not writable (permissions or a read-only disk)" in refusal(f"sqlite:///{database}")
    assert digest(database) == before


def test_a_healthy_store_passes_and_stays_unchanged(mlflow_store):
    before = digest(mlflow_store)
    check_tracking_uri(f"sqlite:///{mlflow_store}")
    assert digest(mlflow_store) == before


def test_a_closed_database_server_port_is_refused_within_seconds():
    uri = f"postgresql://user@127.0.0.1:{free_port()}/mlflow"
    message = refusal(uri)
    start = time.monotonic()  # the probe alone (the first call also imports MLflow)
    with pytest.raises(ValueError):
        store.check_database_server(uri, "paths.tracking_uri")
    assert time.monotonic() - start < store.SERVER_TIMEOUT_S + 1
    assert "no postgresql server answers at 127.0.0.1:" in message
