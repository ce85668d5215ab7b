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

from src.tracking.claim import (
    KILLED_REASON,
    RunLock,
    alive_by_pid,
    loadable_checkpoint,
    mark_killed,
)

log = logging.getLogger(__name__)

UNFINISHED = ("RUNNING", "FAILED", "KILLED", "SCHEDULED")
# Rank 0's decision ("" = start afresh), inherited by the DDP ranks Lightning launches from it.
RESUME_ENV = "TRANSFERLAB_RESUME_RUN"


@dataclass
class ResumePoint:
    """A run this process has claimed (holds its lock) and the checkpoint to continue from;
    `checkpoint` None: the run was completed by another process meanwhile, nothing to do."""

    run_id: str
    output_dir: Path
    checkpoint: Path | None
    lock: RunLock | None = None


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
    resume: str, tracking_uri: str, experiment_name: str, fingerprint: str, params: dict | None
) -> ResumePoint | None:
    """The run to continue, claimed: the given run id (refused if it cannot be resumed), or for
    `auto` the newest unfinished run of this config with a loadable checkpoint (None: start
    afresh). Dead runs passed over end KILLED with the reason."""
    from mlflow.tracking import MlflowClient

    from src.tracking.store import missing_sqlite_store

    if missing_sqlite_store(tracking_uri) is not None:
        if resume == "auto":
            return None
        raise ValueError(f"resume={resume}: no such MLflow run; {tracking_uri} holds no runs yet.")
    client = MlflowClient(tracking_uri)
    if resume != "auto":
        return _claim_given(client, resume, tracking_uri, fingerprint, params or {})
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    chosen = None
    for run in _unfinished(client, experiment.experiment_id, fingerprint):
        if chosen is None:
            chosen = _claim_newest(client, run)
        else:  # an older dead run of this config: the newer one carries on
            _retire(client, run, f"not resumed: resume=auto continued run {chosen.run_id}")
    if chosen is None:
        log.info("resume=auto: no unfinished run of this config with a checkpoint; starting afresh")
    return chosen


def retire_dead_runs(logger, fingerprint: str) -> None:
    """A fresh start (resume unset) of a config whose earlier run died: that run ends KILLED."""
    client, new_run = logger.experiment, logger.run_id
    for run in _unfinished(client, logger.experiment_id, fingerprint):
        if run.info.run_id != new_run:
            _retire(client, run, f"not resumed: run {new_run} of this config started afresh")


def _unfinished(client, experiment_id: str, fingerprint: str) -> list:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_fingerprint = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
    )
    return [run for run in runs if run.info.status in UNFINISHED]


def _claim_given(client, run_id: str, uri: str, fingerprint: str, params: dict) -> ResumePoint:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ValueError(f"resume={run_id}: no such MLflow run in {uri}.") from error
    if run.info.status == "FINISHED":
        raise ValueError(f"resume={run_id}: that run already FINISHED; nothing to resume.")
    if run.data.tags.get("config_fingerprint") != fingerprint:
        raise ValueError(f"resume={run_id}: {config_difference(run.data.params, params)}")
    output_dir = run.data.tags.get("output_dir")
    if not output_dir or not Path(output_dir).is_dir():
        raise ValueError(f"resume={run_id}: its output folder is not here: {output_dir}.")
    lock = RunLock(output_dir)
    if not lock.acquire() or (not lock.existed and alive_by_pid(run.data.tags)):
        lock.release()
        where = f"host {run.data.tags.get('host')}, pid {run.data.tags.get('pid')}"
        raise ValueError(
            f"resume={run_id}: that run is still in use by a live process ({where}); "
            "wait for it to end, or stop it first."
        )
    point = _checked_point(client, run_id, Path(output_dir), lock)
    if point is None or point.checkpoint is None:
        lock.release()
        raise ValueError(
            f"resume={run_id}: no loadable checkpoint in {Path(output_dir) / 'checkpoints'}."
            if point is None
            else f"resume={run_id}: that run FINISHED meanwhile; nothing to resume."
        )
    return point


def _claim_newest(client, run) -> ResumePoint | None:
    """Claim the newest unfinished run: a live one is waited for (two resumers of one dead run:
    the second waits for the first), a dead one without a checkpoint is retired."""
    output_dir = run.data.tags.get("output_dir")
    if not output_dir or not Path(output_dir).is_dir():
        return None  # written on another machine: nothing here to resume from
    lock = RunLock(output_dir)
    free = lock.acquire()
    if free and not lock.existed and alive_by_pid(run.data.tags):
        lock.release()
        return None  # an older job, still training, that predates run locks
    if not free:
        tags = run.data.tags
        log.warning(
            "resume=auto: run %s of this config is in use by a live process (host %s, pid %s); "
            "waiting for it to end",
            run.info.run_id,
            tags.get("host"),
            tags.get("pid"),
        )
        lock.acquire(wait=True)
    point = _checked_point(client, run.info.run_id, Path(output_dir), lock)
    if point is None:
        _retire(client, run, "no loadable checkpoint to resume from", lock)
        lock.release()
    return point


def _checked_point(client, run_id: str, output_dir: Path, lock: RunLock) -> ResumePoint | None:
    """Under the run's lock: its status now (another process may have finished it) and its
    newest loadable checkpoint."""
    if client.get_run(run_id).info.status == "FINISHED":
        log.info("Run %s was completed by another process; nothing left to do", run_id)
        return ResumePoint(run_id, output_dir, None, lock)
    checkpoint = loadable_checkpoint(output_dir)
    return ResumePoint(run_id, output_dir, checkpoint, lock) if checkpoint else None


def _retire(client, run, reason: str, held: RunLock | None = None) -> None:
    """Mark a dead RUNNING run KILLED (runs already FAILED or KILLED keep their status)."""
    if run.info.status != "RUNNING":
        return
    output_dir = run.data.tags.get("output_dir")
    if held is None:
        if not output_dir or not Path(output_dir).is_dir():
            return  # on another machine: cannot tell whether it lives
        lock = RunLock(output_dir)
        if not lock.acquire() or (not lock.existed and alive_by_pid(run.data.tags)):
            lock.release()
            return  # alive
        lock.release()
    tags = run.data.tags
    died = f"process {tags.get('pid')} on {tags.get('host')} died; {reason}"
    mark_killed(client, run.info.run_id, died)


def config_difference(logged: dict[str, str], current: dict[str, str]) -> str:
    """Which keys differ between a run's logged params and this job's config."""
    ignored = ("paths/", "resume")
    keys = sorted(k for k in set(logged) | set(current) if not k.startswith(ignored))
    differing = [
        f"{k}: {logged.get(k, '(unset)')} -> {current.get(k, '(unset)')}"
        for k in keys
        if logged.get(k) != current.get(k)
    ]
    listed = "; ".join(differing[:10]) + (
        f"; and {len(differing) - 10} more" if len(differing) > 10 else ""
    )
    return (
        "this config differs from the run's (its config_fingerprint tag), so the record would "
        f"contradict itself: {listed or 'the unresolved config differs'}. Resume with the "
        "run's own overrides, or start a new run."
    )


def resume_point(
    resume: str,
    tracking_uri: str,
    experiment_name: str,
    fingerprint: str,
    params: dict | None = None,
) -> ResumePoint | None:
    """find_resume_point, the same on every DDP rank. Rank 0 decides and claims; a rank Lightning
    launched from it reuses that decision (its own search would see rank 0's run alive and pick
    another). Ranks started all at once by torchrun or srun cannot share one search: they need a
    run id, which rank 0 claims and the others follow."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    from src.errors import InvalidInput

    inherited = os.environ.get(RESUME_ENV)
    if inherited is not None:
        return ResumePoint(**_from_env(inherited)) if inherited else None
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if resume == "auto" and world > 1:
        raise InvalidInput(
            f"resume=auto with {world} ranks started by torchrun/srun: each rank would search on "
            "its own. Pass resume=<MLflow run id> (SLURM requeues resume by themselves, see "
            "docs/cluster.md)."
        )
    if (_get_rank() or 0) > 0:
        return _follow(resume, tracking_uri)
    return find_resume_point(resume, tracking_uri, experiment_name, fingerprint, params)


def _follow(run_id: str, tracking_uri: str) -> ResumePoint:
    """A rank > 0 continues the run rank 0 claims, from the same checkpoint."""
    from mlflow.tracking import MlflowClient

    output_dir = Path(MlflowClient(tracking_uri).get_run(run_id).data.tags["output_dir"])
    return ResumePoint(run_id, output_dir, loadable_checkpoint(output_dir))


def _from_env(text: str) -> dict:
    values = json.loads(text)
    return {
        "run_id": values["run_id"],
        "output_dir": Path(values["output_dir"]),
        "checkpoint": Path(values["checkpoint"]) if values["checkpoint"] else None,
    }


@contextlib.contextmanager
def shared_with_ranks(point: ResumePoint | None) -> Iterator[None]:
    """While fitting (when Lightning launches ranks > 0), they inherit rank 0's resume decision
    (read only where `resume` is set)."""
    shared = point and {
        "run_id": point.run_id,
        "output_dir": str(point.output_dir),
        "checkpoint": str(point.checkpoint or ""),
    }
    os.environ[RESUME_ENV] = json.dumps(shared) if shared else ""
    try:
        yield
    finally:
        os.environ.pop(RESUME_ENV, None)


def reopen(logger, point: ResumePoint) -> None:
    """The resumed run shows RUNNING again while it trains (FINISHED or FAILED when it ends),
    without the tags of its interruption, and logs only points it does not have yet: resuming
    from an older checkpoint (a corrupt last.ckpt) or mid-epoch repeats steps already logged."""
    client, run_id = logger.experiment, point.run_id
    run = client.get_run(run_id)
    for stale in ("error", KILLED_REASON):
        if stale in run.data.tags:
            client.delete_tag(run_id, stale)
    client.set_tag(run_id, "resumed_from", point.checkpoint.name)
    client.set_tag(run_id, "resumes", str(int(run.data.tags.get("resumes", 0)) + 1))
    recorded = {
        key: {m.step for m in client.get_metric_history(run_id, key)} for key in run.data.metrics
    }
    if hasattr(logger, "skip_recorded"):  # src.tracking.loggers.TrainingMLFlowLogger
        logger.skip_recorded(recorded)
    else:
        log.warning("%s may log a step of the resumed run twice", type(logger).__name__)
    client.update_run(run_id, status="RUNNING")
    log.info("Resuming MLflow run %s from %s", run_id, point.checkpoint)
