"""Optuna sweeps from a Hydra multirun: `python -m src.train -m hparams_search=lr_wd`.

conf/hparams_search/* select the sweeper (conf/hydra/sweeper/optuna.yaml) and declare a space;
OptunaSweeper (sweeper.py) asks trials and launches their jobs; each job's TrialReporter
(reporter.py) reports to its trial and prunes; study.py holds storage and accounting, runs.py MLflow.
Heavy imports (optuna, lightning) stay out of this file: Hydra imports the sweeper on every start.
"""

from __future__ import annotations

__all__ = ["TrialReporter"]


def __getattr__(name: str):
    if name == "TrialReporter":
        from src.sweeps.reporter import TrialReporter

        return TrialReporter
    raise AttributeError(name)
