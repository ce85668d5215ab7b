"""Tracking: every MLflow run's lifecycle (runs.py), the Lightning loggers and callbacks of a
training run (loggers.py, callbacks.py), tables, plots, secrets, the store, resume.

Importing the package stays light (no Lightning): src.report and src.similarity.report use
runs.py and tables.py."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(root: str | Path = ".") -> dict[str, str]:
    """The commit this code ran from and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": str(bool(git("status", "--porcelain"))),
        }
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
