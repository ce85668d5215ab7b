"""Optuna sweeps through the real CLI: `python -m src.train -m hparams_search=...` on tiny jobs.

Sweeps run in-process (Hydra's basic launcher runs each trial in this process) where one process is
enough, and as subprocesses where the test needs two at once or a process to kill.
"""

from __future__ import annotations

import math
import os
import runpy
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from src.sweeps.space import SearchSpace, to_dict_override, to_overrides
from src.sweeps.sweeper import OptunaSweeper
from src.sweeps.worker import objective_value
from tests.helpers.compose import CONF_DIR, artifact_paths, compose_raw, compose_train
from tests.helpers.jobs import ROOT, TINY_TRIAL, child_env

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per process: on a shared 2-core machine, two OpenMP threads that compete
    with other processes make these tiny steps up to 50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def space_file(tmp_path: Path, name: str, body: str) -> str:
    """A search space of the test's own, as a user would write one in conf/hparams_search."""
    folder = tmp_path / "conf" / "hparams_search"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n" + body
    )
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def command(tmp_path: Path, overrides: list[str]) -> list[str]:
    return ["-m", *TINY_TRIAL, f"paths.root_dir={tmp_path}", *overrides]


def sweep(tmp_path: Path, overrides: list[str], monkeypatch) -> None:
    """`python -m src.train -m ...` in this process."""
    GlobalHydra.instance().clear()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sys, "argv", ["src/train.py", *command(tmp_path, overrides)])
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))  # what its __main__ would set, undone after
    runpy.run_module("src.train", run_name="__main__")


def start(tmp_path: Path, overrides: list[str], log: str) -> subprocess.Popen:
    env = child_env(OMP_NUM_THREADS="1")  # see one_thread
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", *command(tmp_path, overrides)],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / log).open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/outputs/optuna.db")


def mlflow_runs(tmp_path: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


# --- Done when 1: a 6-trial sweep; Optuna and MLflow agree ----------------------------------------
@pytest.mark.slow
def test_six_trial_sweep_storage_and_mlflow_agree(tmp_path, monkeypatch):
    overrides = ["hparams_search=lr_wd", "hydra.sweeper.n_trials=6", "trainer.max_epochs=1"]
    sweep(tmp_path, overrides, monkeypatch)
    study = load(tmp_path, "lr_wd-tf_efficientnet_lite0-digits")
    assert len(study.trials) == 6 and all(t.state in FINISHED for t in study.trials)
    assert set(study.trials[0].params) == {
        "optimizer.lr",
        "regularisation.weight_decay",
        "strategy.backbone_lr_mult",
    }
    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.data.tags["kind"] == "sweep"  # reports read kind=train unless told otherwise
    assert {c.data.tags["kind"] for c in children} == {"sweep_trial"}
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_id = {c.info.run_id: c for c in children}
    for trial in study.trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial.number"] == str(trial.number)
        assert run.data.tags["optuna.trial.state"] == trial.state.name
        assert run.info.status == "FINISHED"
    best = study.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best.optimizer.lr"] == str(best.params["optimizer.lr"])
    assert parent.info.status == "FINISHED"
    assert {
        "best.json",
        "plots/optimization_history.png",
        "plots/param_importances.png",
        "plots/parallel_coordinate.png",
    } <= artifact_paths(client, parent.info.run_id)


def hopeless_second_trial(tmp_path: Path, name: str) -> str:
    """Trial 0 learns; trial 1 has lr=1e-9, so after its first epoch it is below trial 0's first
    epoch, and a median pruner with one finished trial as reference must stop it."""
    return space_file(
        tmp_path,
        name,
        f"    study_name: {name}\n"
        "    enqueue_trials: [{optimizer.lr: 0.02}, {optimizer.lr: 1.0e-9}]\n"
        "    pruner: {n_startup_trials: 1, n_warmup_steps: 0}\n"
        "    params:\n      optimizer.lr: {type: categorical, choices: [0.02, 1.0e-9]}\n",
    )


# --- Done when 2: pruning happens, and the pruned trial ran fewer epochs ---------------------------
@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_early(tmp_path, monkeypatch, capfd):
    searchpath = hopeless_second_trial(tmp_path, "prune")
    overrides = [searchpath, "hparams_search=prune", "hydra.sweeper.n_trials=2"]
    sweep(tmp_path, [*overrides, "trainer.max_epochs=3", "strategy=linear_probe"], monkeypatch)
    study = load(tmp_path, "prune")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED], [
        (t.state, t.intermediate_values) for t in study.trials
    ]
    complete, pruned = study.trials
    assert len(pruned.intermediate_values) < len(complete.intermediate_values) == 3
    client, _, children = mlflow_runs(tmp_path)
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"  # stopped on purpose, not a crash
    assert run.data.tags["pruned"] == "true" and "error" not in run.data.tags
    assert run.data.tags["optuna.trial.state"] == "PRUNED"
    epochs = len(client.get_metric_history(run.info.run_id, "val/acc"))
    full = len(client.get_metric_history(complete.user_attrs["mlflow_run_id"], "val/acc"))
    assert epochs < full == 3
    # One line says so, with the value it was pruned at; no Hydra error, no "None".
    out = capfd.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "PRUNED" in line]
    value = pruned.intermediate_values[max(pruned.intermediate_values)]
    assert len(lines) == 1 and f"Trial 1 PRUNED at val/acc={value:.4f}" in lines[0], lines
    assert "2/2 trials" in lines[0] and "best " in lines[0]
    assert "Error executing job" not in out.out + out.err and "=None" not in out.out + out.err


# --- Done when 5: an exception and a NaN both FAIL; the sweep finishes ------------------------------
@pytest.mark.slow
def test_raising_and_nan_trials_fail_and_the_sweep_goes_on(tmp_path, monkeypatch):
    # Grid over three learning rates: -1 is refused up front; 1e30 makes the loss NaN; 1e-3 trains.
    searchpath = space_file(
        tmp_path,
        "failing",
        "    study_name: failing\n"
        "    max_failures: 3\n"
        "    params:\n      optimizer.lr: {type: categorical, choices: [1.0e-3, -1.0, 1.0e30]}\n",
    )
    overrides = [searchpath, "hparams_search=failing", "hydra/sweeper/sampler=grid"]
    sweep(tmp_path, [*overrides, "monitor.metric=val/loss", "monitor.mode=min"], monkeypatch)
    study = load(tmp_path, "failing")
    by_lr = {t.params["optimizer.lr"]: t for t in study.trials}
    assert len(study.trials) == 3 and by_lr[1e-3].state == TrialState.COMPLETE
    assert by_lr[-1.0].state == by_lr[1e30].state == TrialState.FAIL
    assert "optimizer.lr=-1.0: must be > 0" in by_lr[-1.0].user_attrs["fail_reason"]
    reason = by_lr[1e30].user_attrs["fail_reason"]
    assert "non-finite" in reason or "nan" in reason
    client, _, _ = mlflow_runs(tmp_path)
    assert client.get_run(by_lr[1e30].user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert "mlflow_run_id" not in by_lr[-1.0].user_attrs  # refused before any run existed


def test_nan_or_missing_results_and_exceptions_are_fail():
    def job(value=None, error=None):
        result = JobReturn()
        result.status = JobStatus.FAILED if error else JobStatus.COMPLETED
        result._return_value = error if error else value
        return result

    assert objective_value(job(0.5)) == ("COMPLETE", 0.5, "")
    assert objective_value(job(math.nan))[0] == "FAIL"
    assert objective_value(job(None))[0] == "FAIL"
    assert objective_value(job(error=RuntimeError("CUDA out of memory")))[0] == "FAIL"
    assert objective_value(job(error=optuna.TrialPruned("epoch 1")))[0] == "PRUNED"


# --- Done when 3: two workers at once share n_trials, no parameter set twice -----------------------
@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    overrides = ["hparams_search=lr_wd", "hydra.sweeper.n_trials=4", "trainer.max_epochs=1"]
    workers = [start(tmp_path, overrides, f"worker{i}.log") for i in range(2)]
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=300) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    study = load(tmp_path, "lr_wd-tf_efficientnet_lite0-digits")
    assert len(study.trials) == 4 and all(t.state in FINISHED for t in study.trials)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 4
    _, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4


# --- Done when 4: kill mid-sweep, start again: numbers continue, nothing finished is re-run -------
@pytest.mark.slow
def test_a_killed_sweep_resumes_its_study(tmp_path, monkeypatch):
    overrides = ["hparams_search=lr_wd", "hydra.sweeper.n_trials=3", "trainer.max_epochs=1"]
    worker = start(tmp_path, overrides, "killed.log")
    db = tmp_path / "outputs" / "optuna.db"
    deadline = time.monotonic() + 240
    while complete_trials(db) < 2:
        assert worker.poll() is None and time.monotonic() < deadline, (
            tmp_path / "killed.log"
        ).read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    study = load(tmp_path, "lr_wd-tf_efficientnet_lite0-digits")
    before = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}

    sweep(tmp_path, overrides, monkeypatch)
    study = load(tmp_path, "lr_wd-tf_efficientnet_lite0-digits")
    for number, trial in before.items():  # untouched: not re-run
        again = study.trials[number]
        assert (again.state, again.params, again.datetime_complete) == (
            TrialState.COMPLETE,
            trial.params,
            trial.datetime_complete,
        )
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == 3
    new = [t.number for t in finished if t.number not in before]
    assert min(new) > max(before)  # trial numbers continue
    stale = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(stale) <= 1  # the trial that was running when the worker died
    client, parents, _ = mlflow_runs(tmp_path)
    assert len(parents) == 1
    for trial in stale:  # its run, if the job got as far as opening one, says KILLED
        if "mlflow_run_id" in trial.user_attrs:
            assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


@pytest.mark.slow  # an in-process sweep: Hydra, Optuna and MLflow start up
def test_ctrl_c_in_a_trial_ends_the_study_run_killed(tmp_path, monkeypatch):
    """The worker's Ctrl-C path (its `self.sweeper.mlflow` was once a stale `self.s`, an
    AttributeError that hid the interrupt and left the study's run RUNNING)."""
    import src.training
    from src.tracking.claim import KILLED_REASON

    def interrupted(cfg, choices):
        raise KeyboardInterrupt

    monkeypatch.setattr(src.training, "train", interrupted)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        sweep(tmp_path, ["hparams_search=lr_wd", "hydra.sweeper.n_trials=2"], monkeypatch)
    _, parents, children = mlflow_runs(tmp_path)
    (parent,) = parents
    assert parent.info.status == "KILLED" and not children
    assert parent.data.tags[KILLED_REASON] == "KeyboardInterrupt"
    (trial,) = load(tmp_path, "lr_wd-tf_efficientnet_lite0-digits").trials
    assert trial.state == TrialState.FAIL


def complete_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute(
                "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
            ).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


# --- plain Hydra grids still work -----------------------------------------------------------------
@pytest.mark.slow
def test_a_plain_grid_gets_a_parent_run_and_names_that_tell_its_points_apart(
    tmp_path, monkeypatch, capfd
):
    sweep(tmp_path, ["optimizer.lr=0.001,0.01", "trainer.max_epochs=1"], monkeypatch)
    _, parents, children = mlflow_runs(tmp_path)
    (parent,) = parents
    assert parent.data.tags["kind"] == "grid" and parent.info.status == "FINISHED"
    assert parent.data.params["grid/optimizer.lr"] == "0.001,0.01"
    assert len(children) == 2  # plain runs, nested, named by the value each one swept
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["kind"] for r in children} == {"train"}
    names = sorted(r.info.run_name for r in children)
    assert names == [
        "finetune-digits-tf_efficientnet_lite0-s42-lr=0.001",
        "finetune-digits-tf_efficientnet_lite0-s42-lr=0.01",
    ]
    assert not (tmp_path / "outputs" / "optuna.db").exists()
    records = [line for line in capfd.readouterr().out.splitlines() if line.startswith("[")]
    assert f"Grid finished: MLflow parent run {parent.info.run_id}" in records[-1]


# --- spaces and their checks (no training) -------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*")))
def test_every_shipped_space_names_real_config_keys(tmp_path, name):

    cfg = compose_train(tmp_path, [f"hparams_search={name}"])
    full = compose_raw("train", [f"hparams_search={name}"], hydra=True)
    params = full.hydra.sweeper.params
    space = SearchSpace(params)
    assert full.hydra.sweeper.metric == cfg.monitor.metric  # defined once, in monitor
    for key in space.unconditional():
        assert key in full.hydra.runtime.choices or key in _flat(cfg), key
    for key, spec in params.items():  # a conditional knob exists in the strategy it depends on
        for group, options in (spec.get("when") or {}).items():
            for option in options:
                chosen = compose_train(tmp_path, [f"{group}={option}"])
                assert key.split(".", 1)[1] in chosen[group], (key, option)


def _flat(cfg, prefix="") -> set[str]:
    keys = set()
    for key, value in cfg.items():
        keys.add(prefix + key)
        if hasattr(value, "items"):
            keys |= _flat(value, f"{prefix}{key}.")
    return keys


def test_space_errors_are_clear():
    with pytest.raises(ValueError, match="choose one of"):
        SearchSpace({"optimizer.lr": {"type": "loguniform", "low": 1, "high": 2}})
    with pytest.raises(ValueError, match="low <= high"):
        SearchSpace({"optimizer.lr": {"type": "float", "low": 2, "high": 1}})
    with pytest.raises(ValueError, match="declared above"):
        SearchSpace({"strategy.decay": {"type": "float", "low": 0, "high": 1, "when": {"x": [1]}}})
    with pytest.raises(ValueError, match="a grid needs"):
        SearchSpace({"optimizer.lr": {"type": "float", "low": 0.1, "high": 1}}).grid()
    grid = SearchSpace(
        {
            "a": {"type": "int", "low": 1, "high": 3},
            "b": {"type": "float", "low": 0, "high": 1, "step": 0.5},
        }
    ).grid()
    assert grid == {"a": [1, 2, 3], "b": [0.0, 0.5, 1.0]}
    with pytest.raises(ValueError, match="not from comma lists"):
        OptunaSweeper._fixed_overrides(["seed=0,1"])


def test_overrides_round_trip_through_hydras_parser():
    params = {"optimizer.lr": 1.5e-05, "strategy": "lp_ft", "x.flag": True, "y": None, "n": 3}
    lines = [
        *to_overrides(params),
        to_dict_override("callbacks.t", {"_target_": "a.B", "p": {"k": 1}}),
    ]
    parsed = OverridesParser.create().parse_overrides(lines)
    values = {o.key_or_group: o.value() for o in parsed}
    assert values["optimizer.lr"] == 1.5e-05 and values["strategy"] == "lp_ft"
    assert values["x.flag"] is True and values["y"] is None and values["n"] == 3
    assert values["callbacks.t"] == {"_target_": "a.B", "p": {"k": 1}}


def test_conditional_knobs_follow_their_strategy():
    space = SearchSpace(
        {
            "strategy": {"type": "categorical", "choices": ["finetune", "partial"]},
            "strategy.freeze_stages": {
                "type": "int",
                "low": 1,
                "high": 3,
                "when": {"strategy": "partial"},
            },
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        chosen = space.suggest(study.ask())
        assert ("strategy.freeze_stages" in chosen) == (chosen["strategy"] == "partial")


# --- DDP inside a sweep: ranks > 0 rerun rank 0's trial, never a trial of their own ---------------
@pytest.mark.slow
def test_ddp_ranks_follow_their_trial(tmp_path):
    searchpath = hopeless_second_trial(tmp_path, "ddp")
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=3"]
    overrides = [
        searchpath,
        "hparams_search=ddp",
        "hydra.sweeper.n_trials=2",
        *ddp,
    ]
    worker = start(tmp_path, overrides, "ddp.log")
    log = tmp_path / "ddp.log"
    assert worker.wait(timeout=400) == 0, log.read_text()[-3000:]
    study = load(tmp_path, "ddp")
    # Both trials, each trained by two ranks; the pruner's decision reached both ranks of trial 1.
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    text = log.read_text()
    assert text.count("DDP rank 1 follows trial 0") == text.count("DDP rank 1 follows trial 1") == 1


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes"])
def test_every_sampler_config_builds_an_optuna_sampler(tmp_path, sampler):
    from hydra.utils import get_method

    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    cfg = compose_raw("train", ["hparams_search=lr_wd", f"hydra/sweeper/sampler={sampler}"], True)
    node = dict(cfg.hydra.sweeper.sampler)
    kwargs = {"seed": 3} | (
        {"search_space": {"optimizer.lr": [1e-3, 1e-2]}} if sampler == "grid" else {}
    )
    built = get_method(node.pop("_target_"))(**node, **kwargs)
    assert isinstance(built, optuna.samplers.BaseSampler)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_storages_work_under_the_sweep_lock(tmp_path, kind):
    from src.sweeps.study import open_storage, study_lock
    from src.tracking.secrets import redact

    url = f"sqlite:///{tmp_path}/o.db" if kind == "sqlite" else f"journal:{tmp_path}/o.log"
    with study_lock(url) as locked:
        study = optuna.create_study(study_name="s", storage=open_storage(url, 60, 180))
        study.tell(study.ask(), 1.0)
    assert locked
    assert optuna.load_study(study_name="s", storage=open_storage(url)).best_value == 1.0
    assert redact("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"


def test_a_key_not_in_the_config_is_refused_before_any_trial(tmp_path, monkeypatch, capsys):
    searchpath = space_file(
        tmp_path, "typo", "    params:\n      optimizer.lrr: {type: float, low: 0.1, high: 1.0}\n"
    )
    with pytest.raises(SystemExit) as stop:  # src/cli.py: bad input is one line and exit 2
        sweep(tmp_path, [searchpath, "hparams_search=typo"], monkeypatch)
    assert stop.value.code == 2
    printed = capsys.readouterr()
    line = "Invalid input: hydra.sweeper.params.optimizer.lrr: no such key"
    assert line in printed.out + printed.err and "Traceback" not in printed.out + printed.err
    assert not (tmp_path / "outputs" / "optuna.db").exists()


# --- a trial's MLflow run is nested from the moment it exists --------------------------------------
def test_a_trial_job_creates_its_run_already_nested(tmp_path):
    """The sweeper hands the parent run id to the job on its command line, so the job's logger
    creates its run with `mlflow.parentRunId` (a SIGKILL right after creation left a second
    top-level run when the tag came later, from TrialReporter)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    sweeper = OptunaSweeper(
        study_name="nested",
        storage=f"sqlite:///{tmp_path}/o.db",
        metric="val/acc",
        direction="max",
        n_trials=1,
        params=OmegaConf.create({"optimizer.lr": {"type": "float", "low": 0.1, "high": 1.0}}),
        sampler=OmegaConf.create({"_target_": "optuna.samplers.RandomSampler"}),
        mlflow=OmegaConf.create(
            {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment_name": "x"}
        ),
    )
    overrides = sweeper._trial_overrides(["seed=3"], 7, {"optimizer.lr": 0.5}, "parent123")
    cfg = compose_train(tmp_path, overrides)
    logger = instantiate(cfg.logger.mlflow)
    run = logger.experiment.get_run(logger.run_id)  # the run as it was created
    assert run.data.tags["mlflow.parentRunId"] == "parent123"
    assert run.data.tags["optuna.trial.number"] == "7"
    assert run.data.tags["mlflow.runName"] == "trial007-nested"
    assert cfg.optimizer.lr == 0.5 and cfg.callbacks.optuna_trial.trial_number == 7
