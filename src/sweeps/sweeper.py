"""OptunaSweeper: `python -m src.train -m hparams_search=lr_wd` runs an Optuna study.

Each worker loops: under the study lock, count the trials and ask the next one; launch its job with
the trial's parameters and identity as overrides (Hydra's configured launcher); tell Optuna how it
ended (COMPLETE, PRUNED, FAIL). Any number of workers started with the same command share the study.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from src.sweeps.space import SearchSpace, to_dict_override, to_overrides

log = logging.getLogger(__name__)

# Set while a trial's job runs: Lightning re-executes this command line for DDP ranks > 0, which
# inherit it and rerun exactly that trial instead of starting a sweep of their own.
TRIAL_ENV = "TRANSFERLAB_SWEEP_TRIAL"
TRIAL_KIND = "sweep_trial"  # the `kind` tag of a trial's run; its study's parent run is kind=sweep
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        storage: str,
        metric: str,
        direction: str,
        n_trials: int,
        params: DictConfig,
        sampler: DictConfig,
        pruner: DictConfig | None = None,
        max_failures: int = 10,
        seed: int = 0,
        enqueue_trials: list | None = None,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        max_retries: int = 1,
        mlflow: DictConfig | None = None,
    ):
        refuse = None
        if direction not in DIRECTIONS:
            refuse = f"hydra.sweeper.direction={direction!r}: choose one of {list(DIRECTIONS)}."
        for key, value in (("n_trials", n_trials), ("max_failures", max_failures)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                refuse = f"hydra.sweeper.{key}={value}: an integer >= 1."
        if refuse:  # Hydra reports a plugin's exception with exit status 1: this is bad input
            log.error("Invalid input: %s", refuse)
            raise SystemExit(2)
        self.study_name, self.storage, self.metric = study_name, storage, metric
        self.direction = DIRECTIONS[direction]
        self.n_trials, self.max_failures, self.seed = n_trials, max_failures, seed
        self.space = SearchSpace(_plain(params))
        self.sampler_cfg, self.pruner_cfg = _plain(sampler), _plain(pruner)
        self.enqueue = _plain(enqueue_trials) or []
        self.heartbeat = (heartbeat_interval, grace_period)
        self.max_retries = max_retries
        self.mlflow = _plain(mlflow) if mlflow and mlflow.get("tracking_uri") else None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # --- the sweep ------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> list:
        from src.errors import refuse_bad_input

        with refuse_bad_input():  # bad input: one line and exit 2 (src/cli.py), before any trial
            fixed = self._fixed_overrides(arguments)
            if TRIAL_ENV in os.environ and os.environ.get("LOCAL_RANK", "0") != "0":
                return self._follow(fixed)
            self._check_keys()
        from src.sweeps.worker import Worker

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        worker = Worker(self, sweep_dir)
        return worker.run(
            lambda trial, params: self._launch(
                self._trial_overrides(fixed, trial, params, worker.parent_run_id), trial
            )
        )

    def _trial_overrides(
        self, fixed: list[str], number: int, params: dict[str, Any], parent_run_id: str | None
    ) -> list[str]:
        """The job's command line: the fixed overrides, the trial's parameters, its identity (for
        TrialReporter) and, with MLflow, its run's name and tags. The run is created nested under
        the study's parent run: no moment exists where it stands alone (a SIGKILL included)."""
        overrides = [*fixed, *to_overrides(params), self.identity_override(number)]
        overrides.append(f"++kind={TRIAL_KIND}")  # reports leave trials out unless asked
        if self.mlflow:
            run_name = (
                f"trial{number:03d}-{self.study_name}"  # the UI cuts long names: number first
            )
            tags = {"optuna.study": self.study_name, "optuna.trial.number": str(number)}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            overrides += to_overrides({"logger.mlflow.run_name": run_name})
            overrides += [to_dict_override("logger.mlflow.tags", tags)]
        return overrides

    def _launch(self, overrides: list[str], number: int):
        environ = dict(os.environ)
        os.environ[TRIAL_ENV] = json.dumps(
            {"number": number, "sweep_dir": str(self.config.hydra.sweep.dir)}
        )
        try:
            return self.launcher.launch([overrides], initial_job_idx=number)[0]
        finally:
            # Lightning's DDP leaves LOCAL_RANK, MASTER_PORT... in this process's environment; the
            # next trial's Trainer would take them as "ranks started elsewhere" and wait forever.
            for key in set(os.environ) - set(environ):
                del os.environ[key]
            os.environ.update(environ)
            release_devices()

    def identity_override(self, number: int) -> str:
        node = {
            "_target_": "src.sweeps.TrialReporter",
            "storage": self.storage,
            "study_name": self.study_name,
            "trial_number": number,
            "monitor": self.metric,
        }
        if self.pruner_cfg:
            node["pruner"] = self.pruner_cfg
        return to_dict_override("callbacks.optuna_trial", node)

    def _follow(self, fixed: list[str]) -> list:
        """A DDP rank > 0: run rank 0's current trial with its parameters, create nothing."""
        import optuna

        from src.sweeps.runs import PARENT_ATTR
        from src.sweeps.study import open_storage

        identity = json.loads(os.environ[TRIAL_ENV])
        study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage))
        params = study.trials[identity["number"]].params
        with open_dict(self.config):
            self.config.hydra.sweep.dir = identity["sweep_dir"]
        log.info("DDP rank %s follows trial %d", os.environ["LOCAL_RANK"], identity["number"])
        parent = study.user_attrs.get(PARENT_ATTR)
        overrides = self._trial_overrides(fixed, identity["number"], params, parent)
        return self.launcher.launch([overrides], initial_job_idx=identity["number"])

    # --- checks before any work ----------------------------------------------------------------
    @staticmethod
    def _fixed_overrides(arguments: list[str]) -> list[str]:
        parsed = OverridesParser.create().parse_overrides(arguments)
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise ValueError(
                f"{sweeps}: an Optuna sweep takes its values from hydra.sweeper.params, not from "
                "comma lists; declare them there (or run without hparams_search for a plain grid)."
            )
        return [o.input_line for o in parsed]

    def _check_keys(self) -> None:
        """Every unconditional parameter must name a key (or group) of the job's config."""
        choices = self.config.hydra.runtime.choices
        for name in self.space.unconditional():
            if name.startswith("+") or name in choices:
                continue
            if OmegaConf.select(self.config, name, default=_MISSING) is _MISSING:
                raise ValueError(
                    f"hydra.sweeper.params.{name}: no such key in the job's config "
                    f"(prefix it with '+' to add a new key)."
                )


_MISSING = object()


def _plain(node: DictConfig | None) -> Any:
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def release_devices() -> None:
    """Between in-process trials: free what a failed (e.g. out-of-memory) trial left behind and
    close a DDP process group, so the next trial's ranks can form a new one."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
