"""Real servers on free loopback ports for integration tests: PostgreSQL (initdb in a temporary
folder) and `mlflow server`. The fixtures that use them live in tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.jobs import default_signals


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if not found and shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql (.ci/run does this on a clean CI machine)."
        )
    return found[-1].parent


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL cluster; yields its base URL postgresql+psycopg2://postgres@127.0.0.1:<port>
    (psycopg2 named: SQLAlchemy 2.1 defaults to psycopg 3, which is not installed).

    PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user that
    Debian's package creates, and every server command runs through `runuser`."""
    bin_dir = postgres_bin()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="transferlab-pg-"))
    if as_owner:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    run = lambda *args: subprocess.run(  # noqa: E731
        [*as_owner, *map(str, args)], check=True, capture_output=True, text=True, timeout=120
    )
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    )
    try:
        run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def create_database(base_url: str, name: str) -> str:
    """A new database on the server; returns its URL."""
    import psycopg2

    connection = psycopg2.connect(base_url.replace("+psycopg2", "") + "/postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"{base_url}/{name}"


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, proxied: bool = True) -> Iterator[str]:
    """`mlflow server` on a free loopback port (as `make server` starts it); yields its URL.
    proxied: clients send artifacts through the server into `artifacts` (--artifacts-destination);
    otherwise the server only names that folder as the default root clients write to themselves."""
    port = free_port()
    where = ["--artifacts-destination" if proxied else "--default-artifact-root", str(artifacts)]
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        *where,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = artifacts.parent / f"mlflow-server-{port}.log"
    # No job runner: its worker processes (MLflow's GenAI jobs) only slow a test machine down.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        preexec_fn=default_signals,  # it is sent SIGTERM
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # up to 120 s for a cold start (schema migration) on 2 busy cores
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:  # the server and its uvicorn workers, which may not mind a lone SIGTERM on a busy box
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
