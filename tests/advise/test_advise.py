"""The advisor (python -m src.advise): the learning-curve fit, the budget, bad input, and a run
killed in its search stage that resumes (ranking reused, study continued). Tiny real runs: digits,
10 images per class at 32 px, a few batches, the two cheap strategies."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from src.advise.budget import Budget
from src.advise.curve import fit, power_law
from src.errors import InvalidInput
from tests.helpers.compose import compose_config
from tests.helpers.jobs import ROOT, tiny

# The tiny job; the data set and the epochs are the advisor's to set.
TRAIN = tiny(
    "logger.mlflow.log_model=false",
    "dataset.num_workers=0",
    "dataset.samples_per_class=10",
    "dataset.batch_size=16",
    "trainer.limit_train_batches=2",
    without=("dataset", "trainer.max_epochs"),
)


def advice(tmp_path: Path, budget: str) -> list[str]:
    """An advice over one backbone and the two cheap strategies, everything in tmp_path."""
    return [
        "dataset=digits",
        f"budget={budget}",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/hydra",
        "candidates=[mobilenetv2]",
        "top_k=1",
        "rank.max_per_class=5",
        "search.max_epochs=2",
        "search.enqueue=[feature_extract,linear_probe]",
        "search.params.strategy.choices=[feature_extract,linear_probe]",
        "data.fractions=[0.5,1.0]",
        "data.seeds=[0]",
        "train_overrides=[" + ",".join(f"'{o}'" for o in TRAIN) + "]",
    ]


def advise_in_process(overrides: list[str]) -> Path:
    from src.advise.__main__ import advise

    return advise(compose_config("advise", None, overrides))


def advise_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "src.advise", *overrides]


# --- the learning curve -------------------------------------------------------------------------
def synthetic(seed: int, a=0.95, b=0.8, c=0.5):
    rng = np.random.default_rng(seed)
    n = np.repeat([50, 100, 200, 400, 800, 1600], 2)
    return n, power_law(n, a, b, c) + rng.normal(0, 0.003, n.size)


def test_curve_recovers_a_known_curve_and_its_extrapolation_lies_in_the_band():
    curve = fit(*synthetic(seed=1))
    assert curve.a == pytest.approx(0.95, abs=0.01)
    assert curve.b == pytest.approx(0.8, abs=0.25)
    assert curve.c == pytest.approx(0.5, abs=0.1)
    low, high = curve.band(3200, level=0.9)
    assert low[0] < curve(3200) < high[0]
    assert low[0] < power_law(3200, 0.95, 0.8, 0.5) < high[0]
    n, n_low, n_high = curve.images_for(0.93)
    assert n_low < n < n_high and n == pytest.approx(((0.8 / 0.02) ** 2), rel=0.5)


def test_band_covers_the_true_curve_at_2x_about_as_often_as_it_says():
    truth = power_law(3200, 0.95, 0.8, 0.5)
    inside = 0
    for seed in range(30):
        low, high = fit(*synthetic(seed)).band(3200, level=0.9)
        inside += low[0] <= truth <= high[0]
    assert inside >= 24  # nominal 90%: 27 of 30


def test_no_band_from_as_many_points_as_parameters():
    curve = fit([100, 200, 400], [0.8, 0.85, 0.88])
    assert not curve.has_band() and np.isnan(curve.band(800)[0][0])


# --- the budget ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds, runs",
    [
        ("20m", 1200, None),
        ("90s", 90, None),
        ("1.5h", 5400, None),
        ("30t", None, 30),
        (15, 900, None),
    ],
)
def test_budget_parses_minutes_seconds_hours_and_trials(text, seconds, runs):
    budget = Budget.parse(text)
    assert (budget.seconds, budget.runs) == (seconds, runs)


@pytest.mark.parametrize("text", ["abc", "0", "0m", "-5m", "2.5t", "10x", ""])
def test_budget_refuses_nonsense(text):
    with pytest.raises(ValueError, match="budget="):
        Budget.parse(text)


@pytest.mark.parametrize(
    "override, message",
    [
        ("budget=abc", "budget='abc'"),
        ("budget=0", "budget=0"),
        ("candidates=[nope_net]", "nope_net"),
        ("metric=val/accc", r"metric='val/accc': choose one of \['val/acc'"),
        ("metric=val/loss", "metric='val/loss'"),  # ranked by a loss maximised: the worst trial
    ],
)
def test_bad_input_is_refused_before_any_run(tmp_path, override, message):
    with pytest.raises(InvalidInput, match=message):
        advise_in_process([*advice(tmp_path, "1t"), override])
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(
        f"sqlite:///{tmp_path}/mlflow.db"
    ).search_experiments(filter_string="name = 'advise'")


@pytest.mark.slow
def test_unknown_dataset_exits_2_with_one_line(tmp_path):
    done = subprocess.run(
        advise_command(["dataset=nope", "budget=5m", f"paths.root_dir={tmp_path}"]),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "dataset='nope'" in done.stderr


# --- budget and resume on real runs -------------------------------------------------------------
@pytest.mark.slow
def test_time_budget_stops_starting_work_and_reports_what_it_skipped(tmp_path):
    report = advise_in_process(advice(tmp_path, "2s"))
    text = report.read_text()
    # The ranking's one candidate always runs and takes longer than 2 s on any machine; after it
    # every stage's share of the budget is spent, so nothing else may start, however fast.
    assert "- search mobilenetv2: further trials" in text
    assert "No data-fraction run fitted the budget." in text
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("advise").experiment_id])
    assert not [r for r in runs if r.data.tags.get("advise_stage") == "data"]


@pytest.mark.slow
def test_a_shipped_search_trial_is_tested_once(tmp_path):
    """budget=1t: one search trial, no data run; the shipped model is that trial, scored once on
    the test split (into its run, with per-image predictions) so the advice states its test
    accuracy, as it does for a data run."""
    text = advise_in_process(advice(tmp_path, "1t")).read_text()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("advise").experiment_id])
    assert not [r for r in runs if r.data.tags.get("advise_stage") == "data"]
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "advise"]
    shipped = client.get_run(parent.data.tags["winning_run"])
    tested = shipped.data.metrics["eval/digits/acc"]
    assert parent.data.metrics["advise/trial_test_acc"] == pytest.approx(tested)
    assert f"test accuracy {100 * tested:.2f}% (its search trial, shipped" in text
    files = [f.path for f in client.list_artifacts(shipped.info.run_id, "predictions")]
    assert files == ["predictions/eval_digits.csv"]


@pytest.mark.slow
def test_killed_in_search_resumes_the_study_and_reuses_the_ranking(tmp_path):
    command = advise_command(advice(tmp_path, "3t"))  # 2 search trials, 1 data run
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while "Trial 1:" not in log.read_text() and first.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Ranking: reused the scores of mobilenetv2" in second.stdout + second.stderr

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = client.search_experiments(filter_string="name = 'advise'")
    runs = client.search_runs([experiment.experiment_id])
    assert sum(r.data.tags.get("kind") == "similarity" for r in runs) == 1  # scored once
    assert sum(r.data.tags.get("kind") == "advise" for r in runs) == 1  # one parent, continued
    # Every run nested under the advice (search trials via their study's run), named apart.
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "advise"]
    assert all(r.data.tags.get("mlflow.parentRunId") for r in runs if r is not parent)
    trial_runs = [r for r in runs if r.data.tags.get("kind") == "advise_search"]
    # trials 0 and 2 finished; trial 1's run exists only if the kill came after its logger began
    assert len(trial_runs) >= 2 and len({r.info.run_name for r in trial_runs}) == len(trial_runs)
    (data_run,) = [r for r in runs if r.data.tags.get("kind") == "advise_data"]
    assert data_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    records = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert f"Done: MLflow run {parent.info.run_id}" in records[-1]
    storage = f"sqlite:///{tmp_path}/outputs/advise/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    states = [t.state.name for t in trials]
    assert states[:2] == ["COMPLETE", "FAIL"]  # trial 1 died with its worker
    assert states[2:] == ["COMPLETE"]  # the study went on from trial 2, up to its 2 trials
    assert (tmp_path / "outputs/advise/digits/RESULTS.md").is_file()


def test_data_stage_fractions_scale_the_users_own_fraction():
    from src.advise.data import fraction_override, train_images

    mine = ["dataset=digits", "dataset.fraction=0.5"]
    assert fraction_override(mine, 0.5) == "dataset.fraction=0.25"
    assert fraction_override(["dataset=digits"], 0.5) == "dataset.fraction=0.5"
    # n on the learning curve is what the run trains on: half of the user's half.
    half, whole = fraction_override(mine, 0.5), fraction_override(mine, 1.0)
    assert (
        train_images(mine, half)
        < train_images(mine, whole)
        < train_images(["dataset=digits"], "dataset.fraction=1.0")
    )


def test_the_shipped_run_is_chosen_on_validation_never_on_test():
    """Two seeds of the winning configuration on all the data: the one with the better validation
    accuracy ships, even when the other scored higher on the test split."""
    from src.advise.stages import winner

    rows = [
        {"fraction": 1.0, "seed": 0, "test_acc": 0.95, "val_acc": 0.80, "run_id": "a"},
        {"fraction": 1.0, "seed": 1, "test_acc": 0.90, "val_acc": 0.85, "run_id": "b"},
        {"fraction": 0.5, "seed": 0, "test_acc": 0.99, "val_acc": 0.99, "run_id": "c"},
    ]
    assert winner({"run_id": "trial"}, rows) == "b"
    assert winner({"run_id": "trial"}, []) == "trial"


def test_the_report_quotes_the_measured_regret_or_says_it_is_not_measured(tmp_path):
    from src.advise.render import regret_line

    assert "not measured yet" in regret_line(tmp_path / "absent.csv")
    table = tmp_path / "regret.csv"
    header = "target,budget,method,regret_points,low,high,compute_fraction,repetitions,note\n"
    table.write_text(
        header
        + "digits,0.2,advisor,0.5,0.1,0.9,0.19,3,\n"
        + "mean,0.2,advisor,0.8,0.2,1.4,0.21,3,\n"
        + "mean,0.1,advisor,2.0,1.0,3.0,0.1,3,\n"
        + "mean,0.2,random search,1.5,1.0,2.0,0.2,3,\n"
    )
    line = regret_line(table)
    assert "2.0 [1.0, 3.0] points at 10 %; 0.8 [0.2, 1.4] points at 21 %" in line
    assert "measured on digits" in line and "1.5" not in line


def test_the_first_trials_are_each_strategy_at_its_configured_defaults():
    """search.enqueue's trials carry the defaults a plain `src.train strategy=<s>` trains with
    (learning rate, C, backbone multiplier, probe epochs, layer decay), not random values; a
    user's own override is the default it starts from."""
    from src.advise.search import enqueued
    from src.advise.stages import job_overrides

    cfg = compose_config("advise", None, ["dataset=digits"])
    trials = {t["strategy"]: t for t in enqueued(cfg, job_overrides(cfg, "mobilenetv2", False))}
    assert list(trials) == list(cfg.search.enqueue)
    assert trials["feature_extract"] == {"strategy": "feature_extract", "strategy.C": 1.0}
    assert trials["linear_probe"] == {"strategy": "linear_probe", "optimizer.lr": 1e-3}
    assert trials["finetune"] == {
        "strategy": "finetune",
        "strategy.backbone_lr_mult": 0.1,
        "optimizer.lr": 1e-3,
    }
    assert trials["lp_ft"]["strategy.probe_epochs"] == 2
    assert trials["layer_decay"]["strategy.decay"] == 0.75
    mine = job_overrides(cfg, "mobilenetv2", False, ["optimizer.lr=0.003"])
    assert enqueued(cfg, mine)[1]["optimizer.lr"] == 0.003
    outside = job_overrides(cfg, "mobilenetv2", False, ["optimizer.lr=0.5"])  # beyond 1e-2
    assert "optimizer.lr" not in enqueued(cfg, outside)[1]  # left to the sampler


def _trial(number, strategy, val, default, backbone="b0"):
    return {
        "backbone": backbone,
        "trial": number,
        "state": "COMPLETE",
        "strategy": strategy,
        "params": {},
        "val_acc": val,
        "default": default,
    }


def test_one_se_rule_keeps_the_cheapest_default_within_the_noise_of_the_best():
    from src.advise.search import best_trial, one_se_trial

    cost = {"feature_extract": 0.4, "finetune": 3.0}
    rows = [
        _trial(0, "feature_extract", 0.960, True),
        _trial(1, "finetune", 0.955, True),
        _trial(12, "feature_extract", 0.965, False),  # tuned: one image in 200 better
    ]
    assert best_trial(rows, cost)["trial"] == 12
    # SE at 0.965 on 200 images: 0.013; the default at 0.960 is within it.
    assert one_se_trial(rows, cost, 200)["trial"] == 0
    # On 20,000 images the SE is 0.0013: 0.005 is more than the noise, the tuned trial wins.
    assert one_se_trial(rows, cost, 20_000)["trial"] == 12
    # Of two defaults within the noise, the cheaper strategy, even at a lower val accuracy.
    rows[1]["val_acc"] = 0.965
    assert one_se_trial(rows, cost, 200)["trial"] == 0
    # A pruned or failed default is no candidate; with none close, the plain best.
    rows[0]["state"] = "PRUNED"
    assert one_se_trial(rows, cost, 200)["trial"] == 1
    assert one_se_trial([rows[2]], cost, 200)["trial"] == 12
    assert one_se_trial([], cost, 200) is None


def test_trial_rows_mark_the_enqueued_defaults():
    from src.advise.search import trial_rows

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    assert [r["default"] for r in trial_rows("b0", study.trials)] == [True, False, False]


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("dataset.source.root: no such folder"),
        sqlite3.OperationalError("disk I/O error"),
    ],
)
def test_an_error_every_job_would_meet_fails_the_advice_not_the_trial(tmp_path, monkeypatch, error):
    """Refused input or a failing store is not one trial's failure or one skipped data run: the
    advice must fail (resumable), not end FINISHED shipping what is left."""
    from src.advise import data as data_stage
    from src.advise.jobs import run_train

    def broken(*_, **__):
        raise error

    monkeypatch.setattr("src.training.train", broken)
    with pytest.raises(type(error)):
        run_train(["dataset=digits", *TRAIN], tmp_path, {})
    monkeypatch.setattr(data_stage, "run_one", broken)
    job = data_stage.DataJob(None, "parent", "key", "advise", [], tmp_path, 1.0)
    with pytest.raises(type(error)):
        data_stage.run_fractions(job, [(1.0, 0)], Budget.parse("1h"), float("inf"), None)


def test_one_trial_s_own_error_is_the_worker_s_to_judge(tmp_path, monkeypatch):
    from hydra.core.utils import JobStatus

    from src.advise import data as data_stage
    from src.advise.jobs import run_train

    def diverged(*_, **__):
        raise ValueError("loss is nan at step 3")

    monkeypatch.setattr("src.training.train", diverged)
    result, _, _ = run_train(["dataset=digits", *TRAIN], tmp_path, {})
    assert result.status == JobStatus.FAILED
    monkeypatch.setattr(data_stage, "run_one", diverged)
    job = data_stage.DataJob(None, "parent", "key", "advise", [], tmp_path, 1.0)
    budget = Budget.parse("1h")
    assert data_stage.run_fractions(job, [(1.0, 0)], budget, float("inf"), None) == []
    assert budget.skipped == ["data: fraction 1.0 seed 0 failed (ValueError)"]


def test_a_bad_image_folder_is_refused_before_any_run(tmp_path):
    from PIL import Image

    one_class = tmp_path / "one_class" / "leaf"
    one_class.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one_class / f"{i}.png")
    for root, message in (
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "one_class", "at least 2"),
    ):
        overrides = [o for o in advice(tmp_path, "1t") if not o.startswith("dataset=")]
        with pytest.raises(InvalidInput, match=message):
            advise_in_process([*overrides, "dataset=imagefolder", f"dataset.source.root={root}"])
        assert not (tmp_path / "mlflow.db").exists()
