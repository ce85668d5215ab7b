"""The tiny real job every training test starts from, and the command line that runs it.

One way to build it: `tiny(*changes)` is the override list of a seconds-long real training job
(the `tiny_overrides` fixture is `tiny()`); compose it with tests.helpers.compose.compose_train or
hand it to a `python -m src.train` child (cli_train). A test states only what differs from it:
`tiny("strategy=lp_ft")`, or `tiny(without=WHOLE_SPLITS)` to train and score whole splits. Tests of
the LightningModule alone, under a bare Lightning Trainer, build its module with
tests/helpers/tiny_module.py instead."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Seconds-long real training: digits at 32 px, a few batches of two epochs.
TINY = [
    "dataset=digits",
    "backbone.input_size=[3,32,32]",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
# TINY's keys that cut the splits short: without them a job reads every batch of each split.
WHOLE_SPLITS = tuple(f"trainer.limit_{split}_batches" for split in ("train", "val", "test"))
# Every trainer key TINY sets: without them the job keeps conf/trainer's epochs, bar and summary.
TRAINER_SHRINK = tuple(item.split("=", 1)[0] for item in TINY if item.startswith("trainer."))


def tiny(*changes: str, without: tuple[str, ...] = ()) -> list[str]:
    """TINY with `changes` applied: a key given again replaces TINY's value in place (one value per
    key, as a command line a person would write). TINY's keys in `without` are dropped first and
    left to conf/ (or to whoever sets them later: the advisor sets the data set and the epochs)."""
    merged = {item.split("=", 1)[0]: item for item in TINY}
    merged = {key: item for key, item in merged.items() if key not in without}
    for item in changes:
        merged[item.split("=", 1)[0]] = item
    return list(merged.values())


# A sweep trial in ~2 s: batches of 16, two per epoch, no test, no model upload.
TINY_TRIAL = tiny(
    "dataset.batch_size=16",
    "dataset.num_workers=0",
    "trainer.limit_train_batches=2",
    "test=false",
    "logger.mlflow.log_model=false",
)


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a `python -m src...` child: its own MLflow store (no URI inherited
    from an earlier in-process test) and this checkout as the project root."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"PROJECT_ROOT": str(ROOT), **extra}


def default_signals() -> None:
    """preexec_fn of a child a test signals: a job started in the background of a non-interactive
    shell inherits SIGINT and SIGQUIT ignored, and Python then never raises KeyboardInterrupt."""
    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def cli_train(tmp: Path, name: str, launch_dir: str, extra=()) -> tuple[list[str], dict]:
    """The command line of a small real job (5 epochs of digits) writing into tmp, and its
    environment. `+callbacks.kill` lets a test stop it where it wants (tests/helpers/faults.py)."""
    command = [
        sys.executable,
        "-m",
        "src.train",
        *tiny(
            "dataset.num_workers=0",
            "trainer.max_epochs=5",
            "test=false",
            "logger.mlflow.log_model=false",
        ),
        f"experiment_name={name}",
        f"paths.root_dir={tmp}",
        f"hydra.run.dir={tmp / launch_dir}",
        "+callbacks.kill._target_=tests.helpers.faults.KillFromEnv",
        *extra,
    ]
    return command, child_env()


def launch(tmp: Path, name: str, launch_dir: str, extra=(), kill_at: str | None = None):
    """cli_train run to its end; with kill_at="epoch:batch" it SIGKILLs itself there."""
    command, env = cli_train(tmp, name, launch_dir, extra)
    if kill_at:
        env["TRANSFERLAB_KILL_AT"] = kill_at
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 1m, 64m) mounted at mount_point for the block; the
    test is skipped where mounting is refused (root and mount rights needed)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:120]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
