"""Run a study's jobs (training and transferability-score jobs), resumably, in one process per
worker: a job whose config fingerprint already has a FINISHED run in the store is skipped, an
unfinished one continues from its last checkpoint (`resume=auto`), the rest start afresh.

One process runs many jobs (no per-job start-up: minutes on a loaded 2-core machine); two workers
(`--worker 0`, `--worker 1`), one per core, share the job list: each takes the next job nobody has
claimed (a claim file in out_dir/claims), so a long job runs beside many short ones.
Used by experiments/backbone_choice/plan.py and experiments/transfer_table/plan.py.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install
log = logging.getLogger("study")


@dataclass(frozen=True)
class StudyJob:
    """One job: `config` (train | similarity) composed with `overrides`; `name` its folder."""

    name: str
    overrides: tuple[str, ...]
    config: str = "train"


def compose_job(job: StudyJob, out_dir: Path):
    """(cfg, choices, fingerprint) as the entry point would build them; outputs under out_dir."""
    from omegaconf import OmegaConf, open_dict

    from src.config import compose
    from src.tracking.resume import config_fingerprint

    overrides = list(job.overrides)
    if job.config == "train":
        overrides.append("resume=auto")  # continue a killed run of this config
    cfg, choices = compose(overrides, job.config)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir / "runs" / job.name)
    return cfg, choices, config_fingerprint(OmegaConf.to_container(cfg, resolve=False))


def finished(tracking_uri: str, experiment: str, fingerprint: str) -> str | None:
    """The id of a FINISHED run of this config in the store, if any."""
    from mlflow import MlflowClient

    from src.tracking.store import missing_sqlite_store

    if missing_sqlite_store(tracking_uri) is not None:
        return None
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.config_fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def run_one(job: StudyJob, out_dir: Path) -> str:
    """'reused' | 'done' | 'failed: <why>'."""
    cfg, choices, fingerprint = compose_job(job, out_dir)
    reused = finished(cfg.paths.tracking_uri, cfg.experiment_name, fingerprint)
    if reused:
        log.info("%s: reused run %s (same config fingerprint %s)", job.name, reused, fingerprint)
        return "reused"
    try:
        if job.config == "train":
            from src.training import train

            train(cfg, choices)
        else:
            from src.similarity.__main__ import measure

            measure(cfg, choices)
    except Exception as error:  # one failed cell must not stop the study; it is reported
        log.exception("%s failed", job.name)
        return f"failed: {type(error).__name__}: {error}"
    return "done"


def claim(out_dir: Path, name: str) -> bool:
    """Whether this worker takes the job: the first to create its claim file does (run.sh clears
    the claims before starting the workers, so a rerun claims everything again)."""
    folder = out_dir / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / name, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def run_jobs(jobs: list[StudyJob], out_dir: Path, worker: int) -> int:
    """Every job not yet claimed by another worker, in order (so a long job early in the list
    runs beside the short ones); the exit status."""
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s"
    )
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    out_dir.mkdir(parents=True, exist_ok=True)
    start, failed, ran = time.time(), [], 0
    for index, job in enumerate(jobs, 1):
        if not claim(out_dir, job.name):
            continue
        began, ran = time.time(), ran + 1
        status = run_one(job, out_dir)
        log.info(
            "[worker %d] job %d/%d %s: %s in %.0f s",
            worker,
            index,
            len(jobs),
            job.name,
            status,
            time.time() - began,
        )
        if status.startswith("failed"):
            failed.append(f"{job.name} ({status})")
    log.info("[worker %d] %d jobs in %.1f min", worker, ran, (time.time() - start) / 60)
    for line in failed:
        log.error("Failed: %s", line)
    return 1 if failed else 0


def main(jobs: list[StudyJob], out_dir: Path) -> None:
    """`plan.py [--worker i] [--list]`: start one per core (run.sh does, after clearing
    out_dir/claims); they share the job list."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=int, default=0, help="this worker's number, for the log")
    parser.add_argument("--list", action="store_true", help="print the jobs and exit")
    args = parser.parse_args()
    if args.list:
        for job in jobs:
            print(job.config, job.name, " ".join(job.overrides))
        print(f"{len(jobs)} jobs")
        return
    sys.exit(run_jobs(jobs, out_dir, args.worker))
