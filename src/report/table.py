"""Aggregate runs into a grid of cells (mean, sample std, n over seeds) and mark each column's best.

Rules, each applied once here:
- one value per seed: of several finished runs with the same row, column and seed (a rerun), the
  newest counts; a run without the seed tag counts as a seed of its own;
- std is the sample std (ddof=1); with one seed there is none;
- n is shown where a cell has fewer seeds than the most complete cell of the table;
- best is decided on the values as printed, so cells that read the same are bold together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from src.errors import InvalidInput
from src.report.query import column

MISSING = "—"


@dataclass(frozen=True)
class Layout:
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    metric: str = "test/acc"
    seed: str = "seed"
    mode: str = "max"  # which end of a column is best: max or min
    scale: float = 100.0  # accuracies read as percent
    digits: int = 2
    row_order: tuple[str, ...] = ()  # labels listed first, in this order; the rest sorted
    column_order: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise InvalidInput(f"mode={self.mode!r}: must be 'max' or 'min'.")
        if not self.rows or not self.columns:
            raise InvalidInput("A table needs at least one row key and one column key.")


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # NaN with one seed
    n: int


@dataclass
class Grid:
    layout: Layout
    row_labels: list[str]
    column_labels: list[str]
    cells: dict[tuple[str, str], Cell]
    best: set[tuple[str, str]]
    most_seeds: int

    def text(self, row: str, col: str) -> str:
        """'87.34 ± 1.20', '87.34 ± 1.20 (n=2)', '87.34 (n=1)' or the missing mark."""
        cell = self.cells.get((row, col))
        if cell is None:
            return MISSING
        text = self.number(cell.mean)
        if not math.isnan(cell.std):
            text += f" ± {self.number(cell.std)}"
        if cell.n < self.most_seeds:
            text += f" (n={cell.n})"
        return text

    def number(self, value: float) -> str:
        return f"{value * self.layout.scale:.{self.layout.digits}f}"


def label(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.Series:
    """Row or column labels: the keys' values joined by ' / ' (a run lacking a key reads '?')."""
    parts = [frame[column(frame, key)].fillna("?").astype(str) if column(frame, key) in frame
             else pd.Series("?", index=frame.index) for key in keys]  # fmt: skip
    return parts[0].str.cat(parts[1:], sep=" / ") if len(parts) > 1 else parts[0]


def natural_order(labels, order: tuple[str, ...] = ()) -> list[str]:
    """The configured order first, then numbers by value (fractions), then text alphabetically."""
    order = [str(v) for v in order]
    rest = sorted(set(labels) - set(order), key=lambda v: (not is_number(v), sort_key(v)))
    return [v for v in order if v in set(labels)] + rest


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sort_key(text: str):
    return (float(text), "") if is_number(text) else (0.0, text)


def newest_per_seed(frame: pd.DataFrame, keys: tuple[str, ...], seed: str) -> pd.DataFrame:
    """Of runs alike in `keys` and seed (reruns, resumes), only the newest."""
    subset = [c for c in (column(frame, k) for k in (*keys, seed)) if c in frame]
    return frame.sort_values("start_time").drop_duplicates(subset, keep="last") if subset else frame


def per_seed(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """Columns row, col, seed, value: one value per (row, col, seed), the newest run's."""
    metric = f"metrics.{layout.metric}"
    if metric not in frame:
        return pd.DataFrame(columns=["row", "col", "seed", "value"])
    seed = column(frame, layout.seed)
    values = pd.DataFrame({
        "row": label(frame, layout.rows),
        "col": label(frame, layout.columns),
        "seed": frame[seed].astype(str) if seed in frame else frame["run_id"],
        "value": frame[metric],
        "start_time": frame["start_time"],
    }).dropna(subset=["value"])  # fmt: skip
    values = values.sort_values("start_time").drop_duplicates(["row", "col", "seed"], keep="last")
    return values.drop(columns="start_time")


def aggregate(frame: pd.DataFrame, layout: Layout) -> Grid:
    values = per_seed(frame, layout)
    stats = values.groupby(["row", "col"])["value"].agg(["mean", "std", "count"])  # std: ddof=1
    cells = {
        key: Cell(float(s["mean"]), float(s["std"]), int(s["count"])) for key, s in stats.iterrows()
    }
    grid = Grid(
        layout,
        natural_order(values["row"], layout.row_order),
        natural_order(values["col"], layout.column_order),
        cells,
        best=set(),
        most_seeds=max((cell.n for cell in cells.values()), default=0),
    )
    grid.best = best_cells(grid)
    return grid


def best_cells(grid: Grid) -> set[tuple[str, str]]:
    """Per column, every cell whose printed mean is the best printed mean."""
    pick = max if grid.layout.mode == "max" else min
    best = set()
    for col in grid.column_labels:
        shown = {row: float(grid.number(grid.cells[row, col].mean))
                 for row in grid.row_labels if (row, col) in grid.cells}  # fmt: skip
        if shown:
            top = pick(shown.values())
            best |= {(row, col) for row, value in shown.items() if value == top}
    return best
