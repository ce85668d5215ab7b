"""Hydra only instantiates plugins defined under the `hydra_plugins` namespace package; the
sweeper itself lives in src/sweeps. Selected by conf/hydra/sweeper/optuna.yaml."""

from src.sweeps.sweeper import OptunaSweeper as _Sweeper


class OptunaSweeper(_Sweeper):
    """transferlab's Optuna sweeper (see src/sweeps/sweeper.py)."""
