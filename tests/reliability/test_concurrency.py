"""Four training jobs at once on one sqlite MLflow store: four FINISHED runs, no point lost."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest

from tests.helpers.jobs import ROOT, child_env, tiny

pytestmark = pytest.mark.slow  # four training processes


def test_four_concurrent_jobs_on_one_sqlite_store(tmp_path):
    env = child_env(OMP_NUM_THREADS="1")
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.train",
                *tiny(
                    "dataset.num_workers=0",
                    "trainer.max_epochs=3",
                    "trainer.limit_train_batches=4",
                    "trainer.log_every_n_steps=1",
                    "test=false",
                    "logger.mlflow.log_model=false",
                ),
                f"seed={seed}",
                f"paths.root_dir={tmp_path}",
                f"hydra.run.dir={tmp_path / str(seed)}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    for job in jobs:
        _, stderr = job.communicate(timeout=900)
        assert job.returncode == 0, stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("transferlab").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3
        assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) == 12
