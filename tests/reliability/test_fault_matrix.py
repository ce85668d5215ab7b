"""The fault matrix (issue 20): a job is killed at one point, then `resume=auto` is run. Every
case ends with exactly one FINISHED run of the config, one point per epoch per metric in it, and
no run left RUNNING (a dead run that could not be resumed ends KILLED, with the reason)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from tests.helpers.jobs import ROOT, child_env, default_signals, tiny

EPOCHS = 3
PER_EPOCH = ("val/acc", "val/loss", "val/f1_macro")
# A training epoch's own aggregates are logged after its validation checkpoint: a kill in that
# instant loses them with the process (no checkpoint holds them). Never twice, though.
TRAIN_EPOCH = ("train/loss_epoch", "train/acc")

pytestmark = pytest.mark.slow


def command(tmp: Path, launch: str, extra=()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "src.train",
        *tiny(
            "dataset.num_workers=0",
            f"trainer.max_epochs={EPOCHS}",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.log_every_n_steps=1",
            "logger.mlflow.log_model=false",
        ),
        "experiment_name=faults",
        f"paths.root_dir={tmp}",
        f"hydra.run.dir={tmp / launch}",
        "+callbacks.kill._target_=tests.helpers.faults.KillFromEnv",
        *extra,
    ]


def start(tmp: Path, launch: str, extra=(), **faults: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(tmp, launch, extra),
        cwd=ROOT,
        env=child_env(OMP_NUM_THREADS="1", **faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_signals,
    )


def finish(job: subprocess.Popen) -> tuple[int, str]:
    """(exit status, everything it printed)."""
    output, _ = job.communicate(timeout=900)
    return job.returncode, output


# case -> (extra overrides, fault variables, exit status of the faulty launch)
CASES = {
    "sigkill_before_first_checkpoint": ([], {"TRANSFERLAB_KILL_AT": "0:1"}, -9),
    "sigkill_between_best_and_last": ([], {"TRANSFERLAB_KILL_AFTER_BEST": "0"}, -9),
    "sigkill_mid_epoch": ([], {"TRANSFERLAB_KILL_AT": "1:1"}, -9),
    "sigkill_during_test": (["test=true"], {"TRANSFERLAB_KILL_IN_TEST": "1"}, -9),
    "sigkill_during_feature_extraction": (
        [
            "strategy=feature_extract",
            "strategy.classifier=linear",
            "regularisation=light",
            "strategy.cache_dir=CACHE",
        ],
        {"TRANSFERLAB_KILL_IN_FEATURES": "1"},
        -9,
    ),
    "sigterm_mid_epoch": (
        [],
        {"TRANSFERLAB_KILL_AT": "1:1", "TRANSFERLAB_KILL_SIGNAL": "TERM"},
        143,
    ),
    # Beyond the list: SIGTERM in test (Lightning does not act on it in the last batch)
    # and outside Lightning's loops (feature extraction: src.errors.sigterm_raises).
    "sigterm_during_test": (
        ["test=true"],
        {"TRANSFERLAB_KILL_IN_TEST": "1", "TRANSFERLAB_KILL_SIGNAL": "TERM"},
        143,
    ),
    "sigterm_during_feature_extraction": (
        [
            "strategy=feature_extract",
            "strategy.classifier=linear",
            "regularisation=light",
            "strategy.cache_dir=CACHE",
        ],
        {"TRANSFERLAB_KILL_IN_FEATURES": "1", "TRANSFERLAB_KILL_SIGNAL": "TERM"},
        143,
    ),
}


NO_CHECKPOINT_YET = (
    "sigkill_before_first_checkpoint",
    "sigkill_during_feature_extraction",
    "sigterm_during_feature_extraction",
)


@pytest.mark.parametrize("case", list(CASES))
def test_a_fault_then_resume_auto_ends_with_one_finished_run(tmp_path, case):
    extra, faults, status = CASES[case]
    extra = [e.replace("CACHE", str(tmp_path / "cache")) for e in extra]
    extra += [] if "test=true" in extra else ["test=false"]
    code, stderr = finish(start(tmp_path, "a", extra, **faults))
    assert code == status, stderr[-3000:]
    if status == 143:
        (killed,) = runs(tmp_path)
        assert killed.info.status == "KILLED" and killed.data.tags["killed_reason"] == "SIGTERM"

    code, stderr = finish(start(tmp_path, "b", [*extra, "resume=auto"]))
    assert code == 0, stderr[-3000:]
    finished = assert_one_finished_run(tmp_path)
    if "test=true" in extra:
        assert len(history(tmp_path, finished, "test/acc")) == 1
    if case in NO_CHECKPOINT_YET:  # nothing to resume from: it ends KILLED, a new run finishes
        (dead,) = [r for r in runs(tmp_path) if r.info.status != "FINISHED"]
        reason = "SIGTERM" if status == 143 else "died"
        assert dead.info.status == "KILLED" and reason in dead.data.tags["killed_reason"]
    else:  # continued in the same run, from its checkpoint
        assert len(runs(tmp_path)) == 1 and finished.data.tags["resumed_from"].endswith(".ckpt")


def test_a_resumer_killed_in_turn_is_resumed_again(tmp_path):
    """SIGKILL mid-epoch, then SIGKILL of the resuming job in a later epoch, then resume=auto."""
    code, stderr = finish(start(tmp_path, "a", ["test=false"], TRANSFERLAB_KILL_AT="1:1"))
    assert code == -9, stderr[-3000:]
    resumer = ["test=false", "resume=auto"]
    code, stderr = finish(start(tmp_path, "b", resumer, TRANSFERLAB_KILL_AT="2:0"))
    assert code == -9, stderr[-3000:]
    code, stderr = finish(start(tmp_path, "c", resumer))
    assert code == 0, stderr[-3000:]
    finished = assert_one_finished_run(tmp_path)
    assert finished.data.tags["resumes"] == "2"


def test_two_concurrent_resumers_share_nothing(tmp_path):
    """Both start at once on one dead run: one continues it, the other waits for it and, finding
    it FINISHED, has nothing left to do. One run, one point per epoch."""
    code, stderr = finish(start(tmp_path, "a", ["test=false"], TRANSFERLAB_KILL_AT="1:1"))
    assert code == -9, stderr[-3000:]
    jobs = [start(tmp_path, launch, ["test=false", "resume=auto"]) for launch in ("b", "c")]
    outputs = [finish(job) for job in jobs]
    assert [code for code, _ in outputs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum("completed by another process" in err for _, err in outputs) == 1
    assert_one_finished_run(tmp_path)
    assert len(runs(tmp_path)) == 1


def test_a_corrupt_last_checkpoint_resumes_from_the_newest_loadable_one(tmp_path):
    code, stderr = finish(start(tmp_path, "a", ["test=false"], TRANSFERLAB_KILL_AT="2:1"))
    assert code == -9, stderr[-3000:]
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write cut short
    code, stderr = finish(start(tmp_path, "b", ["test=false", "resume=auto"]))
    assert code == 0, stderr[-3000:]
    finished = assert_one_finished_run(tmp_path)
    assert finished.data.tags["resumed_from"].startswith("epoch")
    assert torch.load(last, weights_only=False)["epoch"] >= EPOCHS - 1  # written anew, whole


def runs(tmp: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("faults")
    return client.search_runs([experiment.experiment_id])


def history(tmp: Path, run, key: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return client.get_metric_history(run.info.run_id, key)


def assert_one_finished_run(tmp: Path):
    all_runs = runs(tmp)
    assert not [r for r in all_runs if r.info.status == "RUNNING"], "a run was left RUNNING"
    (finished,) = [r for r in all_runs if r.info.status == "FINISHED"]
    assert "error" not in finished.data.tags and "killed_reason" not in finished.data.tags
    for key in PER_EPOCH:
        if key in finished.data.metrics:
            steps = [m.step for m in history(tmp, finished, key)]
            assert len(steps) == EPOCHS and len(set(steps)) == EPOCHS, (key, steps)
    for key in TRAIN_EPOCH:
        steps = [m.step for m in history(tmp, finished, key)]
        assert EPOCHS - 1 <= len(steps) == len(set(steps)) <= EPOCHS, (key, steps)
    return finished
