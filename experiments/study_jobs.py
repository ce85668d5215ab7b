"""Run a study's jobs (training, transferability scores, post-hoc models and evaluations),
resumably, in one process per worker: a job whose config fingerprint already has a FINISHED run in
the store is skipped, an unfinished one continues from its last checkpoint (`resume=auto`), the
rest start afresh. Post-hoc and eval jobs name the training jobs they start from
(`run_id=@run:<job>`) and wait for them.

One process runs many jobs (no per-job start-up: minutes on a loaded 2-core machine); two workers
(`--worker 0`, `--worker 1`), one per core, share the job list: each takes the next job nobody has
claimed (a claim file in out_dir/claims), so a long job runs beside many short ones.
Used by the plan.py of experiments/backbone_choice, transfer_table and beyond_finetune.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install
log = logging.getLogger("study")


# A job's override may name another job's finished run: `run_id=@run:<job name>` (post-hoc and
# eval jobs start from training jobs' runs). The driver resolves it when the job starts, waiting
# while another worker still trains the named job.
RUN_REFERENCE = re.compile(r"@run:([\w.:-]+)")
WAIT_SECONDS = 20
KINDS = ("train", "similarity", "posthoc", "eval", "advise")


@dataclass(frozen=True)
class StudyJob:
    """One job: `config` (train | similarity | posthoc | eval | advise) composed with `overrides`
    and, when given, the overrides `resolve()` computes as the job starts (from runs finished by
    then: e.g. the learning rate chosen on validation, a budget from measured compute); `name`
    its folder."""

    name: str
    overrides: tuple[str, ...]
    config: str = "train"
    resolve: Callable[[], tuple[str, ...]] | None = field(default=None, compare=False)
    after: tuple[str, ...] = ()  # jobs that must have finished first (what resolve() reads)

    @property
    def needs(self) -> list[str]:
        """The jobs whose runs this one starts from (its @run: references) or waits for."""
        named = [name for o in self.overrides for name in RUN_REFERENCE.findall(o)]
        return [*named, *(n for n in self.after if n not in named)]


def compose_job(job: StudyJob, out_dir: Path, run_ids: dict[str, str] | None = None):
    """(cfg, choices, fingerprint) as the entry point would build them; outputs under out_dir.
    run_ids: the run of each job named by an @run: reference (placeholders kept when None)."""
    from omegaconf import OmegaConf, open_dict

    from src.config import compose
    from src.tracking.resume import config_fingerprint

    overrides = [
        RUN_REFERENCE.sub(lambda m: run_ids[m.group(1)], o) if run_ids else o for o in job.overrides
    ]
    if job.resolve is not None:
        overrides += job.resolve()
    if job.config == "train":
        overrides.append("resume=auto")  # continue a killed run of this config
    cfg, choices = compose(overrides, job.config)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir / "runs" / job.name)
        if job.config == "advise":  # its trials' and data runs' folders
            cfg.output_dir = cfg.paths.output_dir
    return cfg, choices, config_fingerprint(OmegaConf.to_container(cfg, resolve=False))


def finished(
    tracking_uri: str, experiment: str | None, fingerprint: str, tag: str = "config_fingerprint"
) -> str | None:
    """The id of a FINISHED run whose `tag` is this fingerprint (in `experiment`; None: any)."""
    from mlflow import MlflowClient

    from src.tracking.store import missing_sqlite_store

    if missing_sqlite_store(tracking_uri) is not None:
        return None
    client = MlflowClient(tracking_uri)
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    if not ids:
        return None
    runs = client.search_runs(
        ids,
        f"tags.{tag} = '{fingerprint}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def run_of(name: str, plan: dict[str, StudyJob], out_dir: Path) -> str:
    """The finished run of the job `name` of the plan, waiting while a worker still runs it;
    InvalidInput when it failed or nobody runs it."""
    from src.errors import InvalidInput

    if name not in plan:
        raise InvalidInput(f"@run:{name}: no job of that name in the plan.")
    job = plan[name]
    run_ids = {needed: run_of(needed, plan, out_dir) for needed in job.needs}
    while True:
        found = existing_run(job, out_dir, run_ids)
        if found:
            return found
        if (out_dir / "failed" / name).exists():
            raise InvalidInput(f"@run:{name}: that job failed (see its worker's log).")
        if not (out_dir / "claims" / name).exists():
            raise InvalidInput(f"@run:{name}: that job has not run (is it in this slice?).")
        time.sleep(WAIT_SECONDS)  # another worker is on it


def existing_run(
    job: StudyJob, out_dir: Path, run_ids: dict[str, str] | None = None, composed=None
) -> str | None:
    """The run a finished job left, or None: training, scores, post-hoc: its own run (post-hoc:
    tagged study_job=<fingerprint> by run_one); eval: the run it scored, once it holds the metric.
    run_ids: the runs its @run: references name; composed: compose_job's answer, when at hand."""
    cfg, _, fingerprint = composed or compose_job(job, out_dir, run_ids)
    uri = cfg.paths.tracking_uri
    if job.config in ("train", "similarity"):
        return finished(uri, cfg.experiment_name, fingerprint)
    if job.config in ("posthoc", "advise"):
        return finished(uri, None, fingerprint, tag="study_job")
    return evaluated(uri, cfg)


def evaluated(tracking_uri: str, cfg) -> str | None:
    """An eval job's run, when it already holds the metric that job logs."""
    from mlflow import MlflowClient

    from src.inference.evaluate import eval_prefix

    run = MlflowClient(tracking_uri).get_run(cfg.run_id)
    dataset = cfg.dataset_name or run.data.tags.get("dataset")  # none named: the run's own
    metric = eval_prefix(dataset, cfg.split) + ("acc_tta" if cfg.tta else "acc")
    return cfg.run_id if metric in run.data.metrics else None


# A store that cannot be written for a moment (measured once here: an sqlite "disk I/O error"
# for a few seconds while another process read the store) fails every job at its preflight check
# in a second each: the whole rest of a study would be "failed" in seconds. Such a job waits and
# tries again instead; a store still unwritable after the retries fails it as before.
STORE_RETRIES, STORE_WAIT_S = 5, 30
TRANSIENT = ("cannot be written", "is locked by another process", "cannot be opened")


def run_one(job: StudyJob, out_dir: Path, plan: dict[str, StudyJob] | None = None) -> str:
    """'reused' | 'done' | 'failed: <why>', a job failed on a store that cannot be written for
    the moment tried again (STORE_RETRIES). plan: every job by name (for @run: references)."""
    for attempt in range(STORE_RETRIES + 1):
        status = run_once(job, out_dir, plan)
        transient = "tracking_uri" in status and any(t in status for t in TRANSIENT)
        if not transient or attempt == STORE_RETRIES:
            break
        log.warning("%s: the store is not writable now; again in %d s", job.name, STORE_WAIT_S)
        time.sleep(STORE_WAIT_S)
    if status.startswith("failed"):  # the jobs that start from it stop waiting
        (out_dir / "failed").mkdir(parents=True, exist_ok=True)
        (out_dir / "failed" / job.name).touch()
    return status


def run_once(job: StudyJob, out_dir: Path, plan: dict[str, StudyJob] | None = None) -> str:
    plan = plan or {job.name: job}
    try:
        run_ids = {name: run_of(name, plan, out_dir) for name in job.needs}
        composed = cfg, choices, fingerprint = compose_job(job, out_dir, run_ids)
        reused = existing_run(job, out_dir, run_ids, composed)
        if reused:
            log.info(
                "%s: reused run %s (same config fingerprint %s)", job.name, reused, fingerprint
            )
            return "reused"
        if job.config == "train":
            from src.training import train

            train(cfg, choices)
        elif job.config == "similarity":
            from src.similarity.__main__ import measure

            measure(cfg, choices)
        elif job.config in ("posthoc", "advise"):
            from mlflow import MlflowClient

            if job.config == "posthoc":
                from src.posthoc.__main__ import posthoc_run

                made, _ = posthoc_run(cfg)
            else:
                from src.advise.__main__ import advise_run

                _, made = advise_run(cfg)  # its parent run
            # Its identity, for the reuse above on a rerun.
            MlflowClient(cfg.paths.tracking_uri).set_tag(made, "study_job", fingerprint)
        else:
            from src.eval import evaluate_run

            evaluate_run(cfg)
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
    by_name = {job.name: job for job in jobs}
    for index, job in enumerate(jobs, 1):
        if not claim(out_dir, job.name):
            continue
        began, ran = time.time(), ran + 1
        status = run_one(job, out_dir, by_name)
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
