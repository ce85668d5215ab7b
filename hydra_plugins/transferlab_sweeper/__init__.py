"""Hydra only instantiates plugins defined under the `hydra_plugins` namespace package; the
sweeper itself lives in src/sweeps. Selected by conf/hydra/sweeper/optuna.yaml."""

from src.sweeps.grid import GridSweeper as _GridSweeper
from src.sweeps.sweeper import OptunaSweeper as _Sweeper


class OptunaSweeper(_Sweeper):
    """transferlab's Optuna sweeper (see src/sweeps/sweeper.py)."""


class GridSweeper(_GridSweeper):
    """A plain -m grid under an MLflow parent run (see src/sweeps/grid.py)."""
