"""`make clean` never deletes results; `make clean-runs` does, and only after a yes; `make
dashboard` serves the sweeps' storage on loopback only."""

from __future__ import annotations

import re
import subprocess

from tests.helpers.jobs import ROOT


def recipes() -> dict[str, str]:
    """Makefile target -> its recipe text."""
    text = (ROOT / "Makefile").read_text()
    found, target = {}, None
    for line in text.splitlines():
        if match := re.match(r"^([\w-]+):", line):
            target = match.group(1)
            found[target] = ""
        elif line.startswith("\t") and target:
            found[target] += line + "\n"
    return found


def test_only_clean_runs_removes_the_tracking_store_and_it_asks_first():
    rules = recipes()
    store = re.compile(r"rm -rf.*(mlflow\.db|mlartifacts|optuna)")
    assert [name for name, recipe in rules.items() if store.search(recipe)] == ["clean-runs"]
    assert "read answer" in rules["clean-runs"]  # a prompt before anything goes
    assert "cache" in rules["clean"] and "outputs/runs" in rules["clean"]


def test_clean_runs_deletes_nothing_without_a_yes(tmp_path):
    (tmp_path / "mlflow.db").write_text("runs")
    (tmp_path / "Makefile").write_text((ROOT / "Makefile").read_text())
    result = subprocess.run(
        ["make", "-s", "clean-runs", "STAMP="],
        cwd=tmp_path,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Nothing deleted" in result.stdout
    assert (tmp_path / "mlflow.db").read_text() == "runs"


def test_dashboard_binds_loopback():
    recipe = recipes()["dashboard"]
    assert "optuna-dashboard" in recipe and "--host 127.0.0.1" in recipe
