"""Who owns a run: the process holding the lock file in its output folder.

A training process holds `output_dir/run.lock` (an OS file lock) from before its MLflow run is
created until it ends; the OS drops the lock when the process dies, even by SIGKILL. So a RUNNING
run whose lock is free is dead, and a resumer that takes the lock owns the run: two resumers
can never continue one run, and nobody resumes a run that is still training.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# Why a run was marked KILLED (a tag), so nothing stays RUNNING without an explanation.
KILLED_REASON = "killed_reason"


class RunLock:
    """The lock of one output folder; `acquire(wait=False)` says whether it was free."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.existed = self.path.exists()  # before this process first takes it
        self._lock = FileLock(str(self.path), thread_local=False)

    def acquire(self, wait: bool = False) -> bool:
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


def alive_by_pid(tags: dict[str, str]) -> bool:
    """For a run without a lock file (older code): its process may be alive if it ran elsewhere,
    or runs here under its recorded pid."""
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


def mark_killed(client, run_id: str, reason: str) -> None:
    """A dead RUNNING run that will not be resumed ends KILLED, the reason in a tag."""
    client.set_tag(run_id, KILLED_REASON, reason[:5000])
    client.set_terminated(run_id, "KILLED")
    log.warning("Marked MLflow run %s KILLED: %s", run_id, reason)


def loadable_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint to resume from: last.ckpt if it loads, else the newest one that does (a
    kill between the best and the last save, or a truncated last.ckpt, leaves an older one)."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    others = sorted(
        (p for p in folder.glob("*.ckpt") if p.name != last.name),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in [last, *others]:
        if path.is_file() and _loads(path):
            if path != last:
                log.warning("%s is missing or does not load; resuming from %s", last, path.name)
            return path
    return None


def _loads(path: Path) -> bool:
    """Whether a Lightning checkpoint reads back completely (zip intact, trainer state there)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated zip, a pickle with code, empty file: all mean "not this one"
        return False
    return isinstance(state, dict) and "state_dict" in state and "loops" in state


# Made atomically (O_EXCL) by the fresh run that owns a folder: a second run never shares it.
OWNER_FILE = ".run_owner"


def own_folder(folder: Path, sub_folders: bool = True) -> Path | None:
    """The folder a fresh run writes into: `folder`, or, when another run has it (two runs given
    one hydra.run.dir, or started in the same second), a numbered sub-folder of its own, so
    checkpoints and config.yaml are never shared and eval never scores one run's model for another.
    Without sub_folders: None when `folder` is taken."""
    for attempt in range(1, 1000 if sub_folders else 2):
        candidate = folder if attempt == 1 else folder / f"run{attempt}"
        candidate.mkdir(parents=True, exist_ok=True)
        if (candidate / "config.yaml").exists() or (candidate / "checkpoints").exists():
            continue  # a run from before claims existed
        try:
            os.close(os.open(candidate / OWNER_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return candidate
    if not sub_folders:
        return None
    raise RuntimeError(f"{folder}: 999 runs already; give another hydra.run.dir.")
