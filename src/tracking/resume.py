"""`resume=auto | <MLflow run id>`: continue a killed or crashed job in its own MLflow run, from the
last checkpoint it saved (`save_last`), in the output folder it was writing to.

A job is "the same job" when its resolved config, paths and the resume key aside, hashes the same:
runs carry that hash as the `config_fingerprint` tag. A run killed with SIGKILL never got to say so
and stays RUNNING in MLflow; its `host` and `pid` tags tell a dead process from a live one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNFINISHED = ("RUNNING", "FAILED", "KILLED", "SCHEDULED")
# Rank 0's decision ("" = start afresh), inherited by the DDP ranks Lightning launches from it.
RESUME_ENV = "TRANSFERLAB_RESUME_RUN"


@dataclass
class ResumePoint:
    run_id: str
    output_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / "checkpoints" / "last.ckpt"


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of the (unresolved) config without what changes between launches of one job."""
    stable = {key: value for key, value in config.items() if key not in ("paths", "resume")}
    text = json.dumps(stable, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def process_tags(output_dir: str | Path, fingerprint: str) -> dict[str, str]:
    """What a later `resume=auto` needs to find this run and to know whether it is still alive."""
    return {
        "config_fingerprint": fingerprint,
        "output_dir": str(Path(output_dir).resolve()),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
    }


def find_resume_point(
    resume: str, tracking_uri: str, experiment_name: str, fingerprint: str
) -> ResumePoint | None:
    """The run to continue: the given run id (an error if it cannot be resumed), or for `auto` the
    newest unfinished, dead run of this config with a last checkpoint (None: start afresh)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if resume != "auto":
        try:
            run = client.get_run(resume)
        except MlflowException as error:
            raise ValueError(f"resume={resume}: no such MLflow run in {tracking_uri}.") from error
        if run.info.status == "FINISHED":
            raise ValueError(f"resume={resume}: that run already FINISHED; nothing to resume.")
        point = _point(run)
        if point is None or not point.checkpoint.is_file():
            where = point.checkpoint if point else "(the run has no output_dir tag)"
            raise ValueError(f"resume={resume}: its last checkpoint is missing: {where}.")
        return point
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.config_fingerprint = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        if run.info.status not in UNFINISHED:
            continue
        if run.info.status == "RUNNING" and _alive(run.data.tags):
            continue  # still training somewhere: not ours to take over
        point = _point(run)
        if point is not None and point.checkpoint.is_file():
            return point
    log.info("resume=auto: no unfinished run of this config with a checkpoint; starting afresh")
    return None


def resume_point(
    resume: str, tracking_uri: str, experiment_name: str, fingerprint: str
) -> ResumePoint | None:
    """find_resume_point, the same on every DDP rank. Rank 0 decides; a rank Lightning launched
    from it reuses that decision (its own search would see rank 0's run alive and pick another).
    Ranks started all at once by torchrun or srun cannot share one search: they need a run id."""
    from src.errors import InvalidInput

    inherited = os.environ.get(RESUME_ENV)
    if inherited is not None:
        return (
            find_resume_point(inherited, tracking_uri, experiment_name, fingerprint)
            if inherited
            else None
        )
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if resume == "auto" and world > 1:
        raise InvalidInput(
            f"resume=auto with {world} ranks started by torchrun/srun: each rank would search on "
            "its own. Pass resume=<MLflow run id> (SLURM requeues resume by themselves, see "
            "docs/cluster.md)."
        )
    return find_resume_point(resume, tracking_uri, experiment_name, fingerprint)


@contextlib.contextmanager
def shared_with_ranks(point: ResumePoint | None) -> Iterator[None]:
    """While fitting (when Lightning launches ranks > 0), they inherit rank 0's resume decision
    (read only where `resume` is set)."""
    os.environ[RESUME_ENV] = point.run_id if point else ""
    try:
        yield
    finally:
        os.environ.pop(RESUME_ENV, None)


def reopen(logger, point: ResumePoint) -> None:
    """The resumed run shows RUNNING again while it trains (FINISHED or FAILED when it ends)."""
    logger.experiment.update_run(point.run_id, status="RUNNING")
    log.info("Resuming MLflow run %s from %s", point.run_id, point.checkpoint)


def _point(run) -> ResumePoint | None:
    output_dir = run.data.tags.get("output_dir")
    return ResumePoint(run.info.run_id, Path(output_dir)) if output_dir else None


def _alive(tags: dict[str, str]) -> bool:
    """Whether a RUNNING run's process may still be alive: checked on this host, assumed elsewhere."""
    if tags.get("host") != socket.gethostname():
        return True
    pid = tags.get("pid", "")
    return pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is running (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
