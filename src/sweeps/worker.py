"""One worker's loop over a shared study: ask under the lock, run, tell, until n_trials are in."""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import get_method
from optuna.trial import TrialState

from src.sweeps import runs
from src.sweeps.study import (
    COUNTED,
    WORKER_ATTR,
    Heartbeat,
    claim_worker_index,
    count,
    fail_dead_trials,
    open_storage,
    study_lock,
    worker_id,
)
from src.tracking.secrets import redact

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, sweeper, sweep_dir: Path):
        self.sweeper, self.sweep_dir = sweeper, sweep_dir
        self.n_trials = sweeper.n_trials
        self.counted = COUNTED
        self.study = self._open_study()

    def _open_study(self) -> optuna.Study:
        sweeper = self.sweeper
        pruner = _build(sweeper.pruner_cfg) if sweeper.pruner_cfg else optuna.pruners.NopPruner()
        with study_lock(sweeper.storage):  # the first worker creates the tables and the study
            study = optuna.create_study(
                study_name=sweeper.study_name,
                storage=open_storage(sweeper.storage, *sweeper.heartbeat, sweeper.max_retries),
                direction=sweeper.direction,
                load_if_exists=True,
                pruner=pruner,
            )
            if study.direction.name.lower() != sweeper.direction:
                from src.errors import InvalidInput  # one line, exit 2 (src/cli.py)

                raise InvalidInput(
                    f"Study {sweeper.study_name!r} in {redact(sweeper.storage)} was created to "
                    f"{study.direction.name.lower()}; "
                    f"hydra.sweeper.direction={sweeper.direction}. Use another study_name."
                )
            index = claim_worker_index(study)
            if index == 0 and not study.trials:
                for params in sweeper.enqueue:
                    study.enqueue_trial(params)
            self.parent_run_id = (
                runs.open_parent(study, sweeper.mlflow, self._parent_params())
                if sweeper.mlflow
                else None
            )
        study.sampler = self._sampler(seed=sweeper.seed + index)
        log.info(
            "Study %s (%s): worker %d, sampler %s seed %d, %d trials in storage",
            sweeper.study_name,
            redact(sweeper.storage),
            index,
            type(study.sampler).__name__,
            sweeper.seed + index,
            len(study.trials),
        )
        return study

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        cfg = dict(self.sweeper.sampler_cfg)
        factory = get_method(cfg.pop("_target_"))
        takes = inspect.signature(factory).parameters
        if "search_space" in takes:  # GridSampler: the grid is the space; n_trials at most its size
            cfg["search_space"] = self.sweeper.space.grid()
            self.n_trials = min(self.n_trials, math.prod(map(len, cfg["search_space"].values())))
            # A grid point that failed was tried: it is not run again, as Optuna's grid does.
            self.counted = (*COUNTED, TrialState.FAIL)
        if "seed" in takes:
            cfg["seed"] = seed
        return factory(**cfg)

    def _parent_params(self) -> dict[str, Any]:
        sweeper = self.sweeper
        return {
            "metric": sweeper.metric,
            "direction": sweeper.direction,
            "n_trials": sweeper.n_trials,
            "sampler": sweeper.sampler_cfg,
            "pruner": sweeper.pruner_cfg,
            "space": sweeper.space.params,
        }

    # --- the loop --------------------------------------------------------------------------------
    def run(self, launch: Callable[[int, dict[str, Any]], Any]) -> list:
        with warnings.catch_warnings():
            # Optuna warns on ask/tell that heartbeats are meant for optimize(); we beat ourselves.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            return self._loop(launch)

    def _loop(self, launch: Callable[[int, dict[str, Any]], Any]) -> list:
        from src.progress import progress

        returns = []
        done = count(self.study, tuple(s for s in self.counted if s != TrialState.RUNNING))
        self.bar = progress(
            desc=f"Trials ({self.sweeper.study_name})",
            total=self.n_trials,
            unit="trial",
            leave=True,
            initial=min(done, self.n_trials),
        )
        with self.bar:
            while (trial := self._next_trial()) is not None:
                number, params = trial
                log.info("Trial %d: %s", number, params)
                try:
                    # _trial_id: Optuna's heartbeat API takes storage trial ids; none is public.
                    with Heartbeat(self.study, [self.study.trials[number]._trial_id]):
                        job_return = launch(number, params)
                except BaseException as error:  # Ctrl-C, SystemExit: the trial ends with the sweep
                    self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                    self._tag(number)
                    if self.sweeper.mlflow and isinstance(error, KeyboardInterrupt | SystemExit):
                        runs.end_interrupted(self.study, self.sweeper.mlflow["tracking_uri"], error)
                    raise
                returns.append(job_return)
                self._tell(number, job_return)
        self._finish()
        return returns

    def _progress(self, number: int, state: str, value: float | None, reason: str) -> str:
        """'trial 3 PRUNED at val/acc=0.1620 (pruned after epoch 1) | 4/20 | best 0.9133 (trial 1)'
        and the bar moved on: what a researcher watching the sweep wants in one line."""
        if state == "PRUNED":  # no objective value: the last one it reported
            reported = self.study.trials[number].intermediate_values
            value = reported[max(reported)] if reported else None
            reason = f"after epoch {max(reported)}" if reported else ""
        shown = "n/a" if value is None else f"{value:.4f}"
        line = f"Trial {number} {state} at {self.sweeper.metric}={shown}"
        if state != "COMPLETE" and reason:
            line += f" ({reason})"
        done = count(self.study, tuple(s for s in self.counted if s != TrialState.RUNNING))
        line += f" | {done}/{self.n_trials} trials"
        if count(self.study, (TrialState.COMPLETE,)):
            best = self.study.best_trial
            line += f" | best {best.value:.4f} (trial {best.number})"
            self.bar.set_postfix_str(f"best {self.sweeper.metric}={best.value:.4f}", refresh=False)
        before = self.bar.n
        self.bar.update(max(0, min(done, self.n_trials) - before))
        ran, left = self.bar.n - self.bar.initial, self.n_trials - self.bar.n
        if ran > 0 and left > 0:  # this worker's pace so far
            eta = self.bar.format_dict["elapsed"] / ran * left
            line += f" | ETA {self.bar.format_interval(eta)}"
        return line

    def _next_trial(self) -> tuple[int, dict[str, Any]] | None:
        """The next trial to run, or None when the study is done. While the budget is used up but
        other workers' trials still run, wait: if one of them dies, its retry is ours to run."""
        waiting = False
        while (next_trial := self._ask()) is _WAIT:
            if not waiting:
                log.info("n_trials reached; waiting for the trials other workers are running")
            waiting = True
            time.sleep(self.poll_seconds)
        return next_trial

    def _ask(self):
        """Under the lock: settle trials of dead workers, check the budgets, create the next trial."""
        with study_lock(self.sweeper.storage) as locked:
            for trial in fail_dead_trials(self.study, locked):
                self._tag(trial.number)
            if count(self.study, (TrialState.FAIL,)) >= self.sweeper.max_failures:
                return None
            if count(self.study, self.counted) >= self.n_trials:
                running = count(self.study, (TrialState.RUNNING,))
                return _WAIT if running and self.poll_seconds else None
            trial = self.study.ask()
            # _storage/_trial_id: Optuna removed Trial.set_system_attr; a system attr (not a
            # user attr, which a report would show as a result) is only settable on the storage.
            self.study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())
            return trial.number, self.sweeper.space.suggest(trial)

    @property
    def poll_seconds(self) -> float | None:
        """How often a waiting worker looks again: only heartbeats can reveal a dead worker."""
        # _storage: whether heartbeats are on is only asked of the storage (no Study API).
        interval = getattr(self.study._storage, "get_heartbeat_interval", lambda: None)()
        return min(interval, 5.0) if interval else None

    def _tell(self, number: int, job_return) -> None:
        state, value, reason = objective_value(job_return)
        if self.study.trials[number].state.is_finished():
            # Another worker took it for dead (no heartbeat for grace_period: a stalled machine)
            # and queued its retry; Optuna refuses a second verdict, so this one is only logged.
            log.warning(
                "Trial %d was failed by heartbeat meanwhile; its %s is dropped", number, state
            )
            return
        if state == "FAIL":
            # _storage/_trial_id: a user attr on a trial another process asked for; the public
            # Trial.set_user_attr needs that process's Trial object.
            self.study._storage.set_trial_user_attr(
                self.study.trials[number]._trial_id, "fail_reason", reason
            )
        try:
            self.study.tell(number, value, state=TrialState[state])
        except RuntimeError as error:
            # GridSampler calls Study.stop() once the grid is covered, which only optimize() allows;
            # the state is stored before that, and n_trials is capped at the grid's size anyway.
            if "Study.stop" not in str(error):
                raise
        log.info("%s", self._progress(number, state, value, reason))
        self._tag(number)

    def _tag(self, number: int) -> None:
        if self.sweeper.mlflow:
            runs.tag_trial(self.sweeper.mlflow["tracking_uri"], self.study.trials[number])

    def _finish(self) -> None:
        failures = count(self.study, (TrialState.FAIL,))
        done = count(self.study, tuple(s for s in self.counted if s != TrialState.RUNNING))
        if self.sweeper.mlflow:
            # Workers that end together would write the same parent-run tags at once, which
            # MLflow's store (select, then insert) refuses: one at a time.
            with study_lock(self.sweeper.storage):
                runs.summarise(
                    self.study,
                    self.sweeper.mlflow["tracking_uri"],
                    self.sweep_dir / "optuna",
                    finished=done >= self.n_trials or failures >= self.sweeper.max_failures,
                )
        complete = count(self.study, (TrialState.COMPLETE,))
        if complete:
            best = self.study.best_trial
            log.info(
                "Best trial %d: %s=%.4f %s",
                best.number,
                self.sweeper.metric,
                best.value,
                best.params,
            )
        if failures < self.sweeper.max_failures or done >= self.n_trials:
            from src.tracking.store import done_line

            parent = self.study.user_attrs.get(runs.PARENT_ATTR)  # the study's MLflow run
            log.info(
                done_line(parent, self.sweep_dir, (self.sweeper.mlflow or {}).get("tracking_uri"))
            )
        if failures >= self.sweeper.max_failures and done < self.n_trials:
            raise RuntimeError(
                f"Study {self.sweeper.study_name}: {failures} failed trials reached "
                f"hydra.sweeper.max_failures={self.sweeper.max_failures}; stopped after {done} of "
                f"{self.n_trials} trials. See each trial's user attr fail_reason."
            )


_WAIT = object()


def _build(cfg: dict[str, Any]):
    cfg = dict(cfg)
    return get_method(cfg.pop("_target_"))(**cfg)


def objective_value(job_return) -> tuple[str, float | None, str]:
    """(state, value, reason) from a Hydra JobReturn: the job's return value is the metric."""
    from hydra.core.utils import JobStatus

    # The job's own exception, read without JobReturn.return_value: that getter prints Hydra's
    # "Error executing job with overrides", which a pruned trial is not.
    value = job_return._return_value
    if job_return.status == JobStatus.FAILED and isinstance(value, optuna.TrialPruned):
        return "PRUNED", None, str(value)
    if job_return.status == JobStatus.FAILED:
        error = value
        log.warning(
            "Trial failed (overrides %s): %s: %s",
            job_return.overrides,
            type(error).__name__,
            error,
            exc_info=error,
        )
        return "FAIL", None, f"{type(error).__name__}: {error}"[:2000]
    if value is None or not math.isfinite(float(value)):
        return "FAIL", None, f"the job returned {value!r} for the monitored metric"
    return "COMPLETE", float(value), ""
