"""Real signals to real processes: a similarity multirun stopped by SIGTERM while a job's run is
open ends every run it opened KILLED with `killed_reason`
SIGTERM, exit status 143; none stays RUNNING."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.jobs import ROOT, child_env, default_signals


def runs(database: Path) -> list[tuple[str, str, str | None, str | None]]:
    """(run id, status, kind tag, killed_reason tag) of every run, read with sqlite itself."""
    if not database.exists():
        return []
    query = """
        SELECT r.run_uuid, r.status,
               (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'kind'),
               (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'killed_reason')
        FROM runs r"""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute(query).fetchall()
    except sqlite3.OperationalError:  # the schema is still being made
        return []


@pytest.mark.slow
def test_sigterm_to_a_similarity_multirun_ends_every_run_killed(tmp_path):
    database = tmp_path / "mlflow.db"
    command = [
        sys.executable,
        "-m",
        "src.similarity",
        "-m",
        "dataset=digits",
        "seed=1,2",
        "max_per_class=20",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_env(MLFLOW_TRACKING_URI=f"sqlite:///{database}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_signals,
    )
    try:
        deadline = time.monotonic() + 240
        while not any(kind == "similarity" and s == "RUNNING" for _, s, kind, _ in runs(database)):
            assert child.poll() is None and time.monotonic() < deadline, "no job run opened"
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        output, _ = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 143, output[-2000:]
    assert "Stopped by SIGTERM" in output and "Traceback" not in output
    ended = runs(database)
    assert "similarity" in {kind for _, _, kind, _ in ended}  # (a grid parent, where one is made)
    assert all(status == "KILLED" and reason == "SIGTERM" for _, status, _, reason in ended), ended
