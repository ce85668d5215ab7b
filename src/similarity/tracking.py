"""Similarity runs in MLflow (tag kind=similarity), and their scores attached to training runs.

A similarity run is matched to a training run by what decides the scores: the backbone (name,
pretrained, weights) and the target's images (`dataset_key`, a hash of the resolved dataset source,
so fashion_mnist and fashion_mnist_3k match: same images, other subsample).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from src.tracking.store import experiment_id

log = logging.getLogger(__name__)

KIND = "similarity"
PREFIX = "similarity/"  # every score's metric name, on similarity and training runs alike
MATCH_KEYS = ("backbone", "pretrained", "weights", "dataset_key")


def similarity_key(cfg) -> dict[str, str]:
    """Match tags of a run composed from a config with `backbone` and `dataset` (entry points only)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    source = json.dumps(OmegaConf.to_container(cfg.dataset.source, resolve=True), sort_keys=True)
    return {
        "backbone": cfg.backbone.name,
        "pretrained": str(cfg.backbone.pretrained),
        "weights": str(cfg.backbone.weights),
        "dataset": choices.get("dataset", "custom"),
        "dataset_key": hashlib.sha1(source.encode()).hexdigest()[:12],
    }


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}, the separator Lightning's MLflow logger uses for params."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextmanager
def mlflow_run(
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
) -> Iterator[tuple[MlflowClient, str]]:
    """An MLflow run that ends FINISHED, or FAILED/KILLED with the error as a tag."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id(client, experiment, artifact_location), run_name=run_name, tags=tags
    )
    run_id = run.info.run_id
    log_params(client, run_id, params)
    log.info("MLflow run %s (%s) in %s", run_id, experiment, tracking_uri)
    with run_status(client, run_id):
        yield client, run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """A nested dict as flat params ("a/b"), each value cut to MLflow's 6000 characters."""
    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


@contextmanager
def run_status(client: MlflowClient, run_id: str) -> Iterator[None]:
    """The run ends FINISHED, or FAILED (KILLED on Ctrl-C) with the error as a tag."""
    try:
        yield
    except BaseException as error:
        killed = isinstance(error, KeyboardInterrupt | SystemExit)
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "KILLED" if killed else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def log_scores(client: MlflowClient, run_id: str, scores: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(f"{PREFIX}{k}", float(v), now, 0) for k, v in scores.items()]
    client.log_batch(run_id, metrics=metrics)


def latest_scores(client: MlflowClient, key: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    """Scores of the similarity runs matching `key`, newest first winning (one run may hold the
    transferability scores, a later one with a source data set the domain similarity)."""
    clauses = [f"tags.kind = '{KIND}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.{k} = '{key[k]}'" for k in MATCH_KEYS]
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    scores: dict[str, float] = {}
    for run in reversed(runs):  # oldest first, so the newest value stays
        scores.update({k: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)})
    return scores, [run.info.run_id for run in runs]


def attach_similarity(loggers: list, key: dict[str, str]) -> dict[str, float]:
    """Log the matching similarity scores on a training run (metrics `similarity/*`), with the
    match key as tags, so a table can put the prediction beside the outcome. Never fails training."""
    from mlflow.exceptions import MlflowException

    from src.tracking import mlflow_loggers

    scores: dict[str, float] = {}
    for logger in mlflow_loggers(loggers):
        client, run_id = logger.experiment, logger.run_id
        try:
            for name in ("weights", "dataset_key"):
                client.set_tag(run_id, name, key[name])
            scores, run_ids = latest_scores(client, key)
            if scores:
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in scores.items()])
                client.set_tag(run_id, "similarity_runs", ",".join(run_ids))
        except MlflowException as error:  # an optional lookup: say so, keep training
            log.warning("Similarity lookup failed: %s", error)
        log.info("Similarity scores attached: %d (from %s)", len(scores), key["dataset"])
    return scores


def write_table(rows: list[dict], directory: Path, stem: str) -> list[Path]:
    """rows as <stem>.csv and <stem>.md (a markdown table) in directory."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    directory.mkdir(parents=True, exist_ok=True)
    csv, md = directory / f"{stem}.csv", directory / f"{stem}.md"
    frame.to_csv(csv, index=False)
    md.write_text(markdown(rows))
    return [csv, md]


def markdown(rows: list[dict]) -> str:
    """A markdown table (floats to 4 digits) with the first row's keys as header."""
    if not rows:
        return "(no rows)\n"
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in rows[0]) + " |" for row in rows]
    return "\n".join(lines) + "\n"
