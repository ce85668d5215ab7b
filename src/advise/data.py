"""Stage 3: the best configuration trained at several fractions of the data, with seeds (see
plan() for the order), then a learning curve fitted to
(training images, test accuracy). A finished run of the same configuration, fraction and seed
is reused; no run starts whose estimated cost would end past the stage's deadline."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from src.advise.budget import Budget, scaled_estimate
from src.advise.jobs import compose, fatal, run_train
from src.advise.tracking import PARENT, find_runs
from src.tracking.runs import best_metric

log = logging.getLogger(__name__)
METRIC = "test/acc"
KIND = "advise_data"  # the data runs' `kind` tag


@dataclass(frozen=True)
class DataJob:
    client: MlflowClient
    parent: str
    key: str
    experiment: str
    overrides: list[str]  # the winning trial's, test=true
    output_dir: Path
    prior: float  # seconds the winning trial took on all the data


def config_id(overrides: list[str]) -> str:
    return hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:10]


def cost_factor(fraction: float) -> float:
    """Seconds ~ fixed part (model, evaluation on val and test) + a part that grows with the data."""
    return 0.3 + 0.7 * fraction


def fraction_override(overrides: list[str], fraction: float) -> str:
    """The stage's fractions are of the data the user gave: a user's dataset.fraction=0.5 and the
    stage's 0.25 train on 0.125 of the pool, not on 0.25."""
    given = compose("train", overrides).dataset.fraction
    return f"dataset.fraction={given * fraction!r}"


def train_images(overrides: list[str], fraction_of_users: str) -> int:
    """How many images the training split holds with this dataset.fraction override (the
    curve's n)."""
    from src.config import instantiate_node

    cfg = compose("train", [*overrides, fraction_of_users])
    return len(instantiate_node(cfg.dataset).splits.train)


def plan(fractions: list[float], seeds: list[int]) -> list[tuple[float, int]]:
    """Seed by seed; in each, all the data first (the recommendation's own accuracy), then the
    rest smallest first (cheap, and three sizes make a curve): what a cut-short budget keeps
    is the most useful."""
    order = [max(fractions), *sorted(f for f in fractions if f != max(fractions))]
    return [(f, s) for s in seeds for f in order]


def run_one(job: DataJob, fraction: float, seed: int, limit: list[str]) -> dict:
    tags = {
        "advise_key": job.key,
        "advise_stage": "data",
        "advise_config": config_id(job.overrides),
        "advise_fraction": str(fraction),
        "advise_seed": str(seed),
    }
    found = find_runs(job.client, job.experiment, tags)
    if found:
        run = found[0]
        log.info("Data: reused fraction %s seed %s (run %s)", fraction, seed, run.info.run_id)
    else:
        scaled = fraction_override(job.overrides, fraction)  # composed once per run
        n = train_images(job.overrides, scaled)
        overrides = [*job.overrides, scaled, f"seed={seed}", *limit]
        overrides += [f"++kind={KIND}", f"logger.mlflow.run_name=data-f{fraction}-s{seed}"]
        out = job.output_dir / "data" / f"f{fraction}-s{seed}"
        run_tags = {**tags, "train_images": str(n), PARENT: job.parent}
        result, _, _ = run_train(overrides, out, run_tags)
        result.return_value  # noqa: B018  a failed data run is an error: re-raise it here
        run = find_runs(job.client, job.experiment, tags)[0]
    return {
        "fraction": fraction,
        "seed": seed,
        "train_images": int(run.data.tags["train_images"]),
        "test_acc": run.data.metrics.get(METRIC),
        "val_acc": best_metric(job.client, run.info.run_id),  # the shipped checkpoint's
        "run_id": run.info.run_id,
    }


def run_fractions(
    job: DataJob, units: list[tuple[float, int]], budget: Budget, until: float, quota: int | None
) -> list[dict]:
    """Every planned run that fits (time, or a run quota), in order; the rest skipped, said so."""
    import time

    from src.progress import progress

    rows, measured = [], [(job.prior, cost_factor(1.0))]
    for index, (fraction, seed) in enumerate(progress(units, desc="Advise: data runs", unit="run")):
        estimate = scaled_estimate(measured, cost_factor(fraction))
        if (quota is not None and index >= quota) or not budget.fits(estimate, until):
            budget.skip(f"data: fraction {fraction} seed {seed} (~{estimate:.0f}s)")
            continue
        start = time.perf_counter()
        try:
            row = run_one(job, fraction, seed, budget.time_limit(until))
        except Exception as error:  # one failed run must not cost the report
            if fatal(error):
                raise
            log.warning("Data run fraction %s seed %s failed", fraction, seed, exc_info=error)
            budget.skip(f"data: fraction {fraction} seed {seed} failed ({type(error).__name__})")
            continue
        elapsed = time.perf_counter() - start
        if elapsed > 5:  # a reused run costs nothing and says nothing about the cost
            measured.append((elapsed, cost_factor(fraction)))
        rows.append(row)
    return rows
