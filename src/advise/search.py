"""Stage 2: per kept backbone, a pruned Optuna study over strategy and its key hyperparameters,
run by src/sweeps' Worker (sqlite storage, study lock, dead-worker cleanup, parent MLflow run)
with each trial's train(cfg) in this process. Cheap strategies are enqueued first; a study of the
same name resumes; no trial starts whose estimated cost would end past the stage's deadline."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from src.advise.budget import Budget, scaled_estimate
from src.advise.jobs import run_train
from src.advise.tracking import PARENT
from src.sweeps.runs import PARENT_ATTR, RUN_ATTR
from src.sweeps.space import to_overrides
from src.sweeps.worker import Worker

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
KIND = "advise_search"  # the trials' `kind` tag: reports leave them out of plain-run tables


@dataclass
class SearchJob:
    """One backbone's study: its name, the overrides every trial shares, where it writes."""

    backbone: str
    study_name: str
    overrides: list[str]  # backbone, dataset, epochs, test=false, paths...
    tags: dict[str, str]
    output_dir: Path
    n_trials: int
    cost: dict[str, float]
    prior: list[tuple[float, float]] = field(default_factory=list)  # other studies' timings


def durations(trials: list, cost: dict[str, float]) -> list[tuple[float, float]]:
    """(seconds, cost factor) of the finished trials, from every run that worked on the study."""
    measured = []
    for trial in trials:
        if trial.state in DONE and trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
            measured.append((seconds, cost.get(trial.params.get("strategy"), 1.0)))
    return measured


class BudgetWorker(Worker):
    """The sweeps' Worker, asked first whether the next trial fits the time left."""

    def __init__(self, sweeper, job: SearchJob, budget: Budget, until: float):
        self.job, self.budget, self.until = job, budget, until
        super().__init__(sweeper, job.output_dir)

    def _next_trial(self) -> tuple[int, dict[str, Any]] | None:
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        upcoming = waiting[0].system_attrs.get("fixed_params", {}) if waiting else {}
        factor = self.job.cost.get(upcoming.get("strategy"), max(self.job.cost.values()))
        own = durations(self.study.get_trials(deepcopy=False), self.job.cost)
        estimate = scaled_estimate(own or self.job.prior, factor)
        # A backbone's first trial starts while its window is open: without it, no result at all.
        if not self.budget.fits(estimate, self.until, first=not own):
            left = self.until - self.budget.elapsed()
            self.budget.skip(
                f"search {self.job.backbone}: further trials (next ~{estimate:.0f}s, {left:.0f}s left)"
            )
            return None
        return super()._next_trial()


def enqueued(cfg: DictConfig, overrides: list[str]) -> list[dict[str, Any]]:
    """The first trials: each of search.enqueue at the configured defaults of the parameters it
    searches (what `python -m src.train strategy=<s>` with these overrides trains: its
    conf/strategy and optimizer values), so the search starts where a researcher would, not at
    random values (a learning rate drawn log-uniform over two decades often wastes a 3-epoch
    fine-tune). A default outside the searched range is left to the sampler."""
    from src.advise.jobs import compose
    from src.sweeps.space import SearchSpace

    space = SearchSpace(OmegaConf.to_container(cfg.search.params, resolve=True))
    trials = []
    for strategy in cfg.search.enqueue:
        train_cfg = compose("train", [*overrides, f"strategy={strategy}"])
        params: dict[str, Any] = {"strategy": strategy}
        for name, spec in space.params.items():
            when = spec.get("when") or {}
            if name in params or not all(params.get(k) in v for k, v in when.items()):
                continue
            value = OmegaConf.select(train_cfg, name)
            if spec["type"] == "categorical":
                inside = value in spec["choices"]
            else:
                inside = isinstance(value, int | float) and spec["low"] <= value <= spec["high"]
            if inside:
                params[name] = int(value) if spec["type"] == "int" else value
        trials.append(params)
    return trials


def make_sweeper(cfg: DictConfig, job: SearchJob, mlflow: dict[str, Any]):
    """The sweeps' OptunaSweeper as a plain object: its checks, space, sampler and pruner."""
    from src.sweeps.sweeper import OptunaSweeper

    search = cfg.search
    return OptunaSweeper(
        study_name=job.study_name,
        storage=search.storage,
        metric=cfg.metric,
        direction="max",
        n_trials=job.n_trials,
        params=search.params,
        sampler=search.sampler,
        pruner=search.pruner,
        max_failures=search.max_failures,
        seed=cfg.seed,
        enqueue_trials=OmegaConf.create(enqueued(cfg, job.overrides)),
        mlflow=OmegaConf.create(mlflow),
    )


def run_study(sweeper, job: SearchJob, budget: Budget, until: float, parent: str, client):
    """Run (or resume) one study within the budget; returns its trials."""
    worker = BudgetWorker(sweeper, job, budget, until)
    study_run = worker.study.user_attrs.get(PARENT_ATTR)
    if study_run:  # the study's own parent run, nested under the advice
        client.set_tag(study_run, PARENT, parent)

    def launch(number: int, params: dict[str, Any]):
        overrides = [*job.overrides, *to_overrides(params), sweeper.identity_override(number)]
        overrides += budget.time_limit(until)
        # Nested under the study's run (itself under the advice), named for the UI's table.
        name = f"trial{number:03d}-{params.get('strategy', '')}-{job.backbone}"
        overrides += [f"++kind={KIND}", f"logger.mlflow.run_name={name}"]
        out = job.output_dir / f"trial{number:03d}"
        tags = {**job.tags, PARENT: study_run or parent}
        result, _, seconds = run_train(overrides, out, tags)
        log.info("Trial %d of %s took %.0fs", number, job.study_name, seconds)
        return result

    try:
        worker.run(launch)
    except RuntimeError as error:  # max_failures reached: report what the study has
        budget.skip(f"search {job.backbone}: stopped, {error}")
    if study_run and client.get_run(study_run).info.status == "RUNNING":
        client.set_terminated(study_run, "FINISHED")  # a budget-stopped study: resumable anyway
    return worker.study.get_trials(deepcopy=False)


def trial_rows(backbone: str, trials: list) -> list[dict]:
    """The report's rows: one per trial that ran."""
    rows = []
    for trial in trials:
        if trial.state == TrialState.WAITING:
            continue
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        rows.append(
            {
                "backbone": backbone,
                "trial": trial.number,
                "state": trial.state.name,
                "strategy": trial.params.get("strategy", ""),
                "params": {k: v for k, v in trial.params.items() if k != "strategy"},
                "val_acc": trial.value,
                "seconds": seconds,
                "run_id": trial.user_attrs.get(RUN_ATTR, ""),
                # Enqueued at the configured defaults (enqueued()), not sampled.
                "default": "fixed_params" in trial.system_attrs,
            }
        )
    return rows


def standard_error(acc: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on n images."""
    return math.sqrt(acc * (1 - acc) / n)


def best_trial(rows: list[dict], cost: dict[str, float]) -> dict | None:
    """The highest val/acc; of equals, the cheaper strategy."""
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["val_acc"] is not None]
    if not complete:
        return None
    return max(complete, key=lambda r: (r["val_acc"], -cost.get(r["strategy"], 1.0)))


def one_se_trial(rows: list[dict], cost: dict[str, float], n_val: int) -> dict | None:
    """Breiman's one standard error rule, as an alternative to best_trial: of the trials within
    one binomial standard error (on the n_val validation images) of the highest val/acc, the
    cheapest strategy run at its configured defaults (enqueued(): `default` in trial_rows), then
    the highest val/acc of those; best_trial when no default is that close. A tuned value or a
    costlier strategy must beat the defaults by more than the validation noise: the best of
    dozens of sampled trials on a small validation split is biased upwards (the winner's curse).
    experiments/advisor_regret replays it on the advisor's searches."""
    best = best_trial(rows, cost)
    if best is None:
        return None
    floor = best["val_acc"] - standard_error(best["val_acc"], n_val)
    close = [
        r for r in rows if r["state"] == "COMPLETE" and r.get("default") and r["val_acc"] >= floor
    ]
    if not close:
        return best
    return max(close, key=lambda r: (-cost.get(r["strategy"], 1.0), r["val_acc"]))
