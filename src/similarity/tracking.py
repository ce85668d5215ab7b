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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mlflow is imported where it is used: `--help` of the CLIs stays quick
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

KIND = "similarity"
PREFIX = "similarity/"  # every score's metric name, on similarity and training runs alike
MATCH_KEYS = ("backbone", "pretrained", "weights", "dataset_key")


def similarity_key(cfg, choices=None) -> dict[str, str]:
    """Match tags of a run composed from a config with `backbone` and `dataset`; `choices`: the
    job's config-group choices (the `dataset` tag names its option)."""
    from omegaconf import OmegaConf

    choices = choices or {}
    source = json.dumps(OmegaConf.to_container(cfg.dataset.source, resolve=True), sort_keys=True)
    return {
        "backbone": cfg.backbone.name,
        "pretrained": str(cfg.backbone.pretrained),
        "weights": str(cfg.backbone.weights),
        "dataset": choices.get("dataset", "custom"),
        "dataset_key": hashlib.sha1(source.encode()).hexdigest()[:12],
    }


def log_scores(client: MlflowClient, run_id: str, scores: dict[str, float]) -> None:
    from mlflow.entities import Metric

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
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from src.tracking.loggers import mlflow_loggers

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
