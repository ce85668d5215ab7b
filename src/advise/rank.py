"""Stage 1: score every candidate backbone on a subsample with src.similarity (LogME, LEEP, NCE,
H-score, kNN / linear-probe accuracy), one kind=similarity run each, nested under the advice run.
A candidate already scored for this advice (same key) is read back from MLflow, not recomputed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from src.advise.budget import Budget, scaled_estimate
from src.advise.jobs import as_job, backbone_overrides
from src.advise.tracking import PARENT, find_runs
from src.similarity.tracking import PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankJob:
    """What every candidate's scoring shares."""

    client: MlflowClient
    parent: str  # the advice's MLflow run
    key: str
    dataset: str
    experiment: str
    settings: list[str]  # conf/similarity.yaml overrides: subsample, seed, paths
    output_dir: Path


def scores_of(run) -> dict[str, float]:
    return {k[len(PREFIX) :]: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}


def cached(job: RankJob, name: str):
    tags = {"kind": "similarity", "advise_key": job.key, "advise_backbone": name}
    runs = find_runs(job.client, job.experiment, tags)
    return runs[0] if runs else None


def score(job: RankJob, name: str):
    """src.similarity's measure() for one candidate; its run is then tagged as this advice's."""
    from src.similarity.__main__ import measure

    run_name = f"rank-{name}-{job.key}"
    overrides = [
        *backbone_overrides(name),
        f"dataset={job.dataset}",
        f"experiment_name={job.experiment}",
        f"run_name={run_name}",
        *job.settings,
    ]
    with as_job("similarity", overrides, job.output_dir / "rank" / name) as (cfg, choices):
        measure(cfg, choices)
    (run,) = find_runs(job.client, job.experiment, {"mlflow.runName": run_name})[:1]
    for tag, value in {"advise_key": job.key, "advise_backbone": name, PARENT: job.parent}.items():
        job.client.set_tag(run.info.run_id, tag, value)
    return job.client.get_run(run.info.run_id)


def rank(
    job: RankJob, candidates: list[str], by: str, keep: int, budget: Budget, until: float
) -> list[dict]:
    """One row per scored candidate, best first by `by`. Scoring is far cheaper than training, and
    the search needs `keep` backbones: the first `keep` are always scored; any further one only if
    its scoring would end by `until`."""
    from src.progress import progress

    rows, measured = [], []
    for name in progress(candidates, desc="Advise: ranking backbones", unit="backbone"):
        run = cached(job, name)
        if run is not None:
            log.info("Ranking: reused the scores of %s (run %s)", name, run.info.run_id)
        elif len(rows) >= keep and not budget.fits(scaled_estimate(measured, 1.0), until):
            budget.skip(f"rank: scoring {name}")
            continue
        else:
            start = time.perf_counter()
            run = score(job, name)
            measured.append((time.perf_counter() - start, 1.0))
        rows.append({"backbone": name, **scores_of(run), "similarity_run": run.info.run_id})
    rows.sort(key=lambda row: -row.get(by, float("-inf")))
    for position, row in enumerate(rows, start=1):
        row["rank"] = position
    return rows
