"""The study behind a sweep: storage, a cross-process lock, worker seeds, trial accounting.

Workers never talk to each other, only to the storage. Everything that must be atomic across
them (count the trials, create the next one, number the workers) runs under `StudyLock`, a file
lock beside file-based storages (sqlite, journal). Server databases (PostgreSQL, MySQL) get no lock:
two workers racing for the last trial may then overshoot `n_trials` by one each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from src.tracking.resume import pid_alive

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
# Trials that use up n_trials: finished with a result, or being run right now by some worker.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
WORKER_ATTR = "transferlab:worker"


def redact(url: str) -> str:
    """The storage URL without its password, for logs."""
    if url.startswith(JOURNAL_PREFIX) or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def storage_path(url: str) -> Path | None:
    """The local file behind a storage URL, if there is one."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX) :]).expanduser()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///") :])
    return None


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """`journal:<file>` -> Optuna's journal file; anything else is an SQLAlchemy URL."""
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
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
        )


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[bool]:
    """Exclusive across processes on this machine (and on shared file systems with flock);
    yields whether a lock is held (none for server databases)."""
    path = storage_path(url)
    if path is None:
        yield False
        return
    from filelock import FileLock

    # Not "<file>.lock": Optuna's journal backend takes that name for its own lock.
    with FileLock(str(path) + ".sweep-lock", timeout=600):
        yield True


def claim_worker_index(study: optuna.Study) -> int:
    """0 for the first process to sweep this study, 1 for the next, ...; call under the lock."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    index = int(attrs.get("transferlab:workers", 0))
    study._storage.set_study_system_attr(study._study_id, "transferlab:workers", index + 1)
    return index


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_trials(study: optuna.Study, locked: bool) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose worker process on this host is gone (killed, OOM-killed) become FAIL.

    A worker names itself on its trial before it lets go of the lock, so under the lock a RUNNING
    trial with no name was left by a worker that died in between. Workers on other hosts are
    covered by Optuna's heartbeat (RDB storages) instead.
    """
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(WORKER_ATTR, "")
        owner_host, _, pid = owner.rpartition(":")
        orphan = locked and not owner
        if orphan or (owner_host == host and pid.isdigit() and not pid_alive(int(pid))):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("Trial %d: its worker %s is gone; marked FAIL", trial.number, owner)
            dead.append(trial)
    return dead


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class Heartbeat:
    """Records a running trial's heartbeat (RDB storages), so other hosts can see it is alive."""

    def __init__(self, study: optuna.Study, trial_ids: list[int]):
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
