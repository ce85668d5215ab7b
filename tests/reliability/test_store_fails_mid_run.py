"""The tracking store fails MID-RUN, for real: the sqlite store lives on a small tmpfs, which is
filled to its last block once the run has logged its first epoch. The job ends in one line (exit
1, no traceback; the reason in the job log, as the full store takes no FAILED), and after
space is freed `resume=auto` finishes the same MLflow run with every epoch's points and the
checkpoints the first launch saved."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from tests.helpers.jobs import ROOT, cli_train, default_signals, tmpfs

pytestmark = pytest.mark.slow  # two training processes


@pytest.fixture
def store_tmpfs(tmp_path):
    """A 64 MiB tmpfs (over the store probe's 16 MiB floor); skipped where mounting is refused."""
    with tmpfs(tmp_path / "store", "64m") as mount_point:
        yield mount_point


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as file:
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    return filler


def first_epoch_logged(client, name: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the store may be mid-creation
            experiment = client.get_experiment_by_name(name)
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "val/acc"):
                return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError("the run never logged its first epoch")


def test_a_store_filled_mid_run_ends_in_one_line_and_resumes(tmp_path, store_tmpfs):
    uri = f"sqlite:///{store_tmpfs}/mlflow.db"
    command, env = cli_train(tmp_path, "midrun", "a", [f"paths.tracking_uri={uri}"])
    env |= {"TRANSFERLAB_STEP_SLEEP": "1", "OMP_NUM_THREADS": "1"}
    output = tmp_path / "first.out"
    with output.open("w") as out:
        job = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_signals,
        )
        client = mlflow.MlflowClient(uri)
        try:
            run_id = first_epoch_logged(client, "midrun", time.monotonic() + 300)
            filler = fill(store_tmpfs)
            assert job.wait(timeout=300) == 1
        finally:
            job.kill()
    text = output.read_text()
    assert "Traceback" not in text, text[-3000:]
    (line,) = [x for x in text.splitlines() if "Tracking store failed:" in x]
    assert "full" in line, line
    (run,) = client.search_runs([client.get_experiment_by_name("midrun").experiment_id])
    # A full disk takes no FAILED either: the run stays RUNNING (resume=auto's to continue) and
    # the reason is in the job's log, beside its checkpoints.
    assert run.info.status == "RUNNING"
    assert line in (tmp_path / "a" / "train.log").read_text()
    checkpoints = sorted((tmp_path / "a" / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the first epoch's checkpoint is kept"

    filler.unlink()  # space again: the run resumes in place
    resumed = subprocess.run(
        [*command, "resume=auto"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    experiment = client.get_experiment_by_name("midrun")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val/acc")
    assert sorted(m.step for m in history) == sorted({m.step for m in history})
    assert len(history) == 5
