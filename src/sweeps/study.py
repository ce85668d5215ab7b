"""The study behind a sweep: storage, a cross-process lock, worker seeds, trial accounting.

Workers never talk to each other, only to the storage. Everything that must be atomic across
them (count the trials, create the next one, number the workers) runs under `study_lock`: a file
lock beside file-based storages (sqlite, journal), a PostgreSQL advisory lock on a PostgreSQL
storage (held by a connection, so the server frees it when a worker dies). Other server databases
get no lock: two workers racing for the last trial may then overshoot `n_trials` by one each.

A worker that dies mid-trial stops its trial's heartbeat (RDB storages); after grace_period the
next worker to look marks it FAIL and Optuna's RetryHeartbeatStaleTrialCallback queues a copy
with the same parameters, which that worker runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from src.tracking.claim import pid_alive

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
# Trials that use up n_trials: finished with a result, or being run right now by some worker.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
WORKER_ATTR = "transferlab:worker"


def storage_path(url: str) -> Path | None:
    """The local file behind a storage URL, if there is one."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX) :]).expanduser()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///") :])
    return None


@functools.cache  # one engine (connection pool) per process: a trial per job must not add one
def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retries: int | None = None,
):
    """`journal:<file>` -> Optuna's journal file; anything else is an SQLAlchemy URL. With a
    heartbeat, a trial whose worker went silent is failed and retried up to max_retries times."""
    path = storage_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    # sqlite: wait for a concurrent writer instead of failing with "database is locked".
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = None
        if heartbeat_interval and max_retries:
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry,
        )


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[bool]:
    """Exclusive across processes on this machine (and on shared file systems with flock), or
    across machines on PostgreSQL; yields whether a lock is held."""
    path = storage_path(url)
    if path is not None:
        from filelock import FileLock

        # Not "<file>.lock": Optuna's journal backend takes that name for its own lock.
        with FileLock(str(path) + ".sweep-lock", timeout=600):
            yield True
    elif url.startswith("postgresql"):
        with _advisory_lock(url):
            yield True
    else:
        yield False


ADVISORY_KEY = 0x7472616E73666572  # "transfer": one lock per database, held for milliseconds


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    from sqlalchemy import text

    with _engine(url).connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})


@functools.cache
def _engine(url: str):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, poolclass=NullPool)


def claim_worker_index(study: optuna.Study) -> int:
    """0 for the first process to sweep this study, 1 for the next, ...; call under the lock."""
    # _storage/_study_id: study system attrs have no public setter since Optuna 3 (a counter, not
    # a user attr that would be shown as part of the study).
    attrs = study._storage.get_study_system_attrs(study._study_id)
    index = int(attrs.get("transferlab:workers", 0))
    study._storage.set_study_system_attr(study._study_id, "transferlab:workers", index + 1)
    return index


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_trials(study: optuna.Study, locked: bool) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose worker is gone become FAIL (and, with a retry callback, run again).

    Across hosts: Optuna's heartbeat (RDB storages) fails a trial whose worker stopped beating for
    grace_period. On this host, a worker process that no longer exists is known at once. A worker
    names itself on its trial before it lets go of the lock, so under the lock a RUNNING trial
    with no name was left by a worker that died in between.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    # The study's storage is Optuna's cache around the RDBStorage (not an RDBStorage itself):
    # fail_stale_trials asks it whether heartbeats are on. It runs the retry callback itself.
    optuna.storages.fail_stale_trials(study)
    stale = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    dead = [t for t in running if t.number in stale]
    failed = {t.number for t in dead}
    for trial in dead:
        log.warning("Trial %d: no heartbeat from %s; marked FAIL", trial.number, _owner(trial))
    # _storage: the retry callback lives on the storage only (fail_stale_trials reads it there too).
    retry = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    host = socket.gethostname()
    for trial in running:
        owner_host, _, pid = _owner(trial).rpartition(":")
        orphan = locked and not _owner(trial)
        if trial.number in failed or not (
            orphan or (owner_host == host and pid.isdigit() and not pid_alive(int(pid)))
        ):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("Trial %d: its worker %s is gone; marked FAIL", trial.number, _owner(trial))
        if retry is not None:
            retry(study, study._storage.get_trial(trial._trial_id))  # the callback's own argument
        dead.append(trial)
    return dead


def _owner(trial: optuna.trial.FrozenTrial) -> str:
    return trial.system_attrs.get(WORKER_ATTR, "")


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class Heartbeat:
    """Records a running trial's heartbeat (RDB storages), so other hosts can see it is alive."""

    def __init__(self, study: optuna.Study, trial_ids: list[int]):
        # _storage: record_heartbeat exists on the storage only (Optuna's own optimize() calls it).
        self.storage, self.trial_ids = study._storage, trial_ids
        interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="optuna-heartbeat")

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in self.trial_ids:
                with contextlib.suppress(Exception):  # a missed beat only delays nothing
                    self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
