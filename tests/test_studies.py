"""The studies' job plans (experiments/*/plan.py) and their resumable driver
(experiments/study_jobs.py): every kind of job composes, a finished job is reused by its config
fingerprint instead of being trained again, and post-hoc and eval jobs start from the runs of the
jobs they name."""

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


def test_a_study_s_wall_time_is_the_union_of_its_runs_not_its_pauses():
    import pandas as pd
    from study_results import busy_seconds

    t = pd.Timestamp
    overlapping = [
        (t("2026-01-01 10:00"), t("2026-01-01 11:00")),
        (t("2026-01-01 10:30"), t("2026-01-01 11:30")),
    ]
    next_day = [(t("2026-01-02 10:00"), t("2026-01-02 10:10"))]
    assert busy_seconds(overlapping + next_day) == 90 * 60 + 10 * 60
    assert busy_seconds([]) == 0.0


def test_convergence_is_judged_on_the_cell_s_mean_validation_curve():
    import pandas as pd
    from study_results import convergence, convergence_text

    changes = pd.DataFrame(
        {
            "dataset": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
            "backbone": ["x"] * 8,
            # a: one noisy seed, mean +0.67 (flat); b: every seed rising, mean +1.5; c: one run
            # too short to judge (NaN) is left out, the other fell by 2 points.
            "change": [2.0, -0.5, 0.5, 1.0, 1.5, 2.0, float("nan"), -2.0],
        }
    )
    cells = convergence(changes, ["dataset", "backbone"])
    assert cells["mean"].round(2).tolist() == [0.67, 1.5, -2.0]
    assert cells["flat"].tolist() == [True, False, False]
    assert cells["seeds"].tolist() == [3, 3, 1]
    table, summary = convergence_text(cells, ["backbone"])
    assert table.loc["a", "x"] == "+0.7 (-0.5…+2.0)"
    assert table.loc["b", "x"] == "**+1.5 (+1.0…+2.0)**"
    assert table.loc["c", "x"] == "**-2.0**"
    assert summary == (
        "1 of 3 cells flat (|change| ≤ 1.0 point); still rising: b / x; "
        "falling (past its best epoch, which is the one tested): c / x"
    )
    by_two, _ = convergence_text(
        convergence(changes.assign(size="10"), ["backbone", "dataset", "size"]), ["dataset", "size"]
    )
    assert list(by_two.columns) == ["a / 10", "b / 10", "c / 10"]


def test_tau_resamples_leave_out_a_row_where_some_backbone_s_score_failed():
    import numpy as np
    import pandas as pd
    from study_results import rescorer

    nan = float("nan")
    tables = [pd.DataFrame({"nleep": [1.0, nan, 3.0]}), pd.DataFrame({"nleep": [4.0, 5.0, 6.0]})]
    rescore = rescorer(tables, "nleep")
    rng = np.random.default_rng(0)
    drawn = {tuple(rescore(rng)) for _ in range(50)}
    assert drawn == {(1.0, 4.0), (3.0, 6.0)}  # the row with a NaN never drawn, the others are
    assert rescorer([tables[0].iloc[[1]], tables[1]], "nleep") is None  # no complete row: fixed
    assert rescorer([tables[0], None], "nleep") is None


def test_a_job_on_a_store_unwritable_for_a_moment_is_tried_again(tmp_path, monkeypatch):
    """A transient store failure (the preflight's "cannot be written") waits and retries; any
    other failure, or one that lasts, fails the job and marks it for the jobs that wait on it."""
    import study_jobs
    from study_jobs import StudyJob, run_one

    store = "failed: InvalidInput: logger.mlflow.tracking_uri='sqlite:///x.db': cannot be written"
    answers = iter([store, store, "done", "failed: ValueError: bad", *[store] * 9])
    calls = []
    monkeypatch.setattr(study_jobs, "STORE_WAIT_S", 0)
    monkeypatch.setattr(study_jobs, "run_once", lambda job, *_: calls.append(job) or next(answers))
    job = StudyJob("a", ())
    assert run_one(job, tmp_path) == "done" and len(calls) == 3
    assert run_one(job, tmp_path) == "failed: ValueError: bad" and len(calls) == 4
    assert (tmp_path / "failed" / "a").exists()
    assert run_one(StudyJob("b", ()), tmp_path) == store
    assert len(calls) == 4 + 1 + study_jobs.STORE_RETRIES and (tmp_path / "failed" / "b").exists()


def test_the_beyond_finetune_plan_composes_every_job_kind(tmp_path):
    """Training jobs, post-hoc and eval jobs (their @run: references resolved to run ids)."""
    from study_jobs import compose_job

    jobs = plan("beyond_finetune")
    names = {j.name: j for j in jobs}
    assert len(jobs) == len(names) == 2 * 3 * (7 + 4 + 10)  # sizes x seeds x (train, post, eval)
    for job in jobs:  # every reference names a job planned before it
        assert all(list(names).index(n) < list(names).index(job.name) for n in job.needs)
    kinds = {}
    for job in jobs:
        kinds.setdefault((job.config, job.name.split("-n")[0]), job)
    fingerprints = set()
    for job in kinds.values():
        ids = {name: f"id-of-{name}" for name in job.needs}
        cfg, _, fingerprint = compose_job(job, tmp_path, ids)
        fingerprints.add(fingerprint)
        if job.config == "posthoc":
            assert "@run" not in str(cfg.run_id) + str(list(cfg.run_ids))
        if job.config == "eval" and "shift" in job.name:
            assert cfg.dataset_name == "fashion_mnist_corrupted"
    assert len(fingerprints) == len(kinds)


def test_the_advisor_regret_plan_trains_the_grid_as_the_advisor_trains(tmp_path):
    """Every job kind composes (resolve() stubbed: it reads finished runs); a grid cell is the
    configuration the advisor's data stage would train, and an advice waits for its whole grid."""
    from dataclasses import replace

    from study_jobs import compose_job

    jobs = plan("advisor_regret")
    names = [j.name for j in jobs]
    assert len(jobs) == len(set(names)) == 3 * (4 + 60 + 40 + 9)
    # Every grid before the first advice: no worker waits on an advice while grid runs are left.
    first_advice = min(i for i, j in enumerate(jobs) if j.config == "advise")
    assert all(j.config == "advise" for j in jobs[first_advice:])
    # ... the smallest budget on every target first (an interrupted study has whole budgets).
    assert [j.name for j in jobs[first_advice : first_advice + 3]] == [
        f"advise-{t}-b0.1-s0" for t in ("digits", "textures", "fashion_mnist")
    ]
    assert jobs[-1].name == "advise-fashion_mnist-b0.5-s2"
    stubs = {"train": ("optimizer.lr=0.003",), "advise": ("budget=600s",)}
    kinds = {}
    for job in jobs:
        kinds.setdefault((job.config, job.name.split("-")[0], job.resolve is None), job)
    for job in kinds.values():
        if job.resolve is not None:
            job = replace(job, resolve=lambda job=job: stubs[job.config])
        cfg, _, _ = compose_job(job, tmp_path)
        if job.config == "advise":
            assert cfg.budget == "600s" and cfg.output_dir.endswith(job.name)
            grid = [
                n for n in names if n.startswith(("grid-digits", "seed1-digits", "seed2-digits"))
            ]
            assert set(job.needs) == set(grid) if "digits" in job.name else True
        if job.name.startswith("seed"):
            assert cfg.optimizer.lr == 0.003 and cfg.seed in (1, 2)
        if job.name.startswith("grid"):
            assert cfg.test and cfg.seed == 0 and cfg.monitor.metric == "val/acc"
            assert cfg.trainer.max_epochs == 3  # conf/advise.yaml search.max_epochs


@pytest.mark.slow
def test_a_finished_job_is_reused_and_later_jobs_start_from_its_run(
    tmp_path, tiny_overrides, monkeypatch
):
    """A training job, then a post-hoc and an eval job naming it (@run:): each done once, then
    reused; a job whose source failed fails at once instead of waiting."""
    from study_jobs import StudyJob, run_one

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    overrides = (*tiny_overrides, f"paths.root_dir={tmp_path}", "logger.mlflow.log_model=false")
    job = StudyJob("tiny", (*overrides, "dataset.num_workers=0"))
    calibrated = StudyJob("cal", ("method=calibrate", "run_id=@run:tiny"), "posthoc")
    scored = StudyJob("tta", ("run_id=@run:tiny", "tta=[five_crop]"), "eval")
    broken = StudyJob("broken", (*overrides, "trainer.max_epochs=0"))  # refused
    orphan = StudyJob("orphan", ("method=calibrate", "run_id=@run:broken"), "posthoc")
    plan = {j.name: j for j in (job, calibrated, scored, broken, orphan)}
    (tmp_path / "claims").mkdir()
    for name in plan:
        (tmp_path / "claims" / name).touch()  # as a worker claims each job it takes
    for each in (job, calibrated, scored):
        assert run_one(each, tmp_path, plan) == "done"
        assert run_one(each, tmp_path, plan) == "reused"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    (trained,) = [r for r in runs if r.data.tags["output_dir"].endswith("tiny")]
    assert {r.data.tags.get("kind") for r in runs if r != trained} == {"calibrated"}
    assert "eval/digits/acc_tta" in trained.data.metrics
    assert run_one(broken, tmp_path, plan).startswith("failed")
    assert "that job failed" in run_one(orphan, tmp_path, plan)
