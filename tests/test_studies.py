"""The studies' job plans (experiments/*/plan.py) and their resumable driver
(experiments/study_jobs.py): every kind of job composes, and a finished job is reused by its config
fingerprint instead of being trained again."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from mlflow import MlflowClient

from src.config import CONF_DIR

EXPERIMENTS = CONF_DIR.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))


def plan(study: str):
    spec = importlib.util.spec_from_file_location(f"{study}_plan", EXPERIMENTS / study / "plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.jobs()


@pytest.mark.parametrize(
    ("study", "count"), [("backbone_choice", 20 + 20 + 60), ("transfer_table", 108 + 6 + 1)]
)
def test_every_kind_of_job_in_a_plan_composes(study, count, tmp_path):
    from study_jobs import compose_job

    jobs = plan(study)
    assert len(jobs) == count and len({j.name for j in jobs}) == count
    # One job per kind: scores, fixed features and fine-tuning on each target (their test splits
    # differ); each pool strategy and the full-data runs.
    kinds = {}
    for job in jobs:
        prefix, _, rest = job.name.partition("-")
        key = rest.split("-")[1] if prefix == "finetune" else prefix
        key = job.name.split("-")[-1] if prefix == "pool" else key
        kinds.setdefault((prefix, key, job.config), job)
    kinds.setdefault("last", jobs[-1])
    kinds.setdefault("first", jobs[0])
    fingerprints = set()
    for job in kinds.values():
        cfg, _, fingerprint = compose_job(job, tmp_path)
        fingerprints.add(fingerprint)
        if study == "backbone_choice" and cfg.get("dataset"):
            assert cfg.dataset.test_samples_per_class is None  # the whole test split
    assert len(fingerprints) == len({j.name for j in kinds.values()})  # one config per job


@pytest.mark.slow
def test_a_finished_job_is_reused_not_trained_again(tmp_path, tiny_overrides, monkeypatch):
    from study_jobs import StudyJob, run_one

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    overrides = (*tiny_overrides, f"paths.root_dir={tmp_path}", "logger.mlflow.log_model=false")
    job = StudyJob("tiny", (*overrides, "dataset.num_workers=0"))
    assert run_one(job, tmp_path) == "done"
    assert run_one(job, tmp_path) == "reused"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
