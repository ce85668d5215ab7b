"""`make ui` as a researcher sees it: headless Chromium (Debian's `chromium`) renders the page that
`python -m src.tracking.ui` prints, from a loopback `mlflow server` over a fresh store with one
run. The DOM must show the runs table: the run's name and its val/acc column with the value."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from src.tracking.store import experiment_id
from src.tracking.ui import runs_urls
from tests.helpers.servers import mlflow_server

RUN_NAME = "finetune-digits-tf_efficientnet_lite0-s42"


def rendered_text(url: str, profile) -> str:
    """The page's text after its scripts ran (--dump-dom), tags and styles stripped."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=240, check=True).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)"
)
def test_ui_opens_on_the_runs_table_with_val_acc(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = experiment_id(client, "transferlab", str(tmp_path / "mlartifacts"))
    run = client.create_run(experiment, run_name=RUN_NAME, tags={"kind": "train"})
    metrics = [Metric("val/acc", 0.9375, 0, 7), Metric("test/acc", 0.9125, 0, 7)]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)
    artifacts = tmp_path / "mlartifacts"
    artifacts.mkdir()
    with mlflow_server(uri, artifacts, proxied=False) as base:
        url = runs_urls(uri, base)["transferlab"]
        text = rendered_text(url, tmp_path / "chromium")
    assert RUN_NAME in text
    assert "val/acc" in text and "0.9375" in text  # the column and the run's value in it
    assert "Traces 0" not in text  # not MLflow 3's GenAI overview
