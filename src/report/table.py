"""Aggregate runs into a grid of cells (mean, sample std, n over seeds) and mark each column's best.

Rules, each applied once here:
- a cell holds runs that differ in nothing but the seed: a param that takes several values among
  the runs of one cell (epochs, image size, fraction, ...) becomes a row key of its own (select());
  a param that is constant in every cell but differs between cells is named in the caption;
- one value per seed: of several finished runs with the same row, column and seed (a rerun), the
  newest counts; a run without the seed tag counts as a seed of its own;
- std is the sample std (ddof=1); with one seed there is none;
- n is shown where a cell has fewer seeds than the most complete cell of the table;
- best is decided on the values as printed, so cells that read the same are bold together, and
  only in a column with at least two cells: alone, a cell is not the best of anything.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace

import pandas as pd

from src.errors import InvalidInput
from src.report.query import column
from src.tracking.store import PATH_KEY

log = logging.getLogger(__name__)
# Params that differ from run to run by design, never a difference between configurations: the
# seed (and the keys it feeds), names, and a trial's or resume's identity. Paths are tags now, but
# older runs logged them as params.
# callbacks/<name>/_target_: where a callback's class lives; a refactor that moves it must not split
# a study's cells (the callback's own settings still count).
PER_RUN = re.compile(
    r"(^|/)seed$|^run_name$|^logger/[^/]+/(run_name|tags/.*)$|^callbacks/optuna_trial/|^resume$"
    r"|^callbacks/[^/]+/_target_$|^trainer/max_time$"  # the advisor's per-run time limit
)

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
    parts = [
        frame[column(frame, key)].fillna("?").astype(str)
        if column(frame, key) in frame
        else pd.Series("?", index=frame.index)
        for key in keys
    ]
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


def seed_of(frame: pd.DataFrame, seed: str) -> pd.Series:
    """Each run's seed; a run without one (no such column, or no value) counts as a seed of its
    own: its run id."""
    name = column(frame, seed)
    if name not in frame:
        return frame["run_id"]
    return frame[name].astype(str).where(frame[name].notna(), frame["run_id"])


def newest_per_seed(frame: pd.DataFrame, keys: tuple[str, ...], seed: str) -> pd.DataFrame:
    """Of runs alike in `keys` and seed (reruns, resumes), only the newest."""
    if frame.empty:
        return frame
    subset = [c for c in (column(frame, k) for k in keys) if c in frame]
    marked = frame.assign(_seed=seed_of(frame, seed)).sort_values("start_time")
    return marked.drop_duplicates([*subset, "_seed"], keep="last").drop(columns="_seed")


def per_seed(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """Columns row, col, seed, value: one value per (row, col, seed), the newest run's."""
    metric = f"metrics.{layout.metric}"
    if metric not in frame:
        return pd.DataFrame(columns=["row", "col", "seed", "value"])
    values = pd.DataFrame(
        {
            "row": label(frame, layout.rows),
            "col": label(frame, layout.columns),
            "seed": seed_of(frame, layout.seed),
            "value": frame[metric],
            "start_time": frame["start_time"],
        }
    ).dropna(subset=["value"])
    values = values.sort_values("start_time").drop_duplicates(["row", "col", "seed"], keep="last")
    return values.drop(columns="start_time")


@dataclass
class Selection:
    """The runs a report counts (one per cell and seed, the newest), the layout they fill (rows
    split by any param that differed within a cell) and what the caption must say."""

    frame: pd.DataFrame
    layout: Layout
    split_by: list[str] = field(default_factory=list)  # params added to the rows
    differ: dict[str, list[str]] = field(default_factory=dict)  # param -> its values across cells


def config_params(frame: pd.DataFrame, layout: Layout) -> list[str]:
    """The params columns that describe a configuration (not a run's seed, name or paths)."""
    keys = {column(frame, k) for k in (*layout.rows, *layout.columns, layout.seed)}
    return [
        name
        for name in frame.columns
        if name.startswith("params.")
        and name not in keys
        and not PER_RUN.search(name[7:])
        and not PATH_KEY.search(name[7:])
    ]


def varying_within(frame: pd.DataFrame, cells: pd.Series, params: list[str]) -> list[str]:
    """The params that take more than one value among the runs of some cell (missing values,
    from runs logged before a key existed, are not a value)."""
    if not params or frame.empty:
        return []
    distinct = frame[params].groupby(cells.values).nunique(dropna=True)
    return [name for name in params if (distinct[name] > 1).any()]


def select(frame: pd.DataFrame, layout: Layout) -> Selection:
    """The runs of the table, after making sure no cell mixes configurations (see the module
    docstring); every plot of the report draws from the same selection."""
    metric = f"metrics.{layout.metric}"
    frame = frame.dropna(subset=[metric]) if metric in frame else frame.iloc[0:0]
    unknown = [k for k in (*layout.rows, *layout.columns) if column(frame, k) not in frame]
    if len(frame) and unknown:
        known = sorted(c.split(".", 1)[1] for c in frame.columns if c.startswith("tags."))
        raise InvalidInput(
            f"rows/columns {unknown}: no run has such a tag or param. Tags: {', '.join(known[:25])}"
            " (or any params.<key>)."
        )
    params = config_params(frame, layout)
    cells = label(frame, (*layout.rows, *layout.columns)) if len(frame) else pd.Series(dtype=str)
    split_by = varying_within(frame, cells, params)
    if split_by:
        log.warning(
            "Cells mixed runs that differ in %s: these become row keys, so a cell averages "
            "seeds only (filter the runs, or make them rows or columns yourself).",
            ", ".join(name[7:] for name in split_by),
        )
        layout = replace(layout, rows=(*layout.rows, *split_by))
    keys = tuple(column(frame, k) for k in (*layout.rows, *layout.columns))
    frame = newest_per_seed(frame, keys, layout.seed)
    cells = label(frame, (*layout.rows, *layout.columns)) if len(frame) else pd.Series(dtype=str)
    differ = {}
    for name in params:
        values = frame[name].dropna().astype(str)
        if name not in split_by and values.nunique() > 1 and not restates(frame, name, layout):
            differ[name[7:]] = natural_order(values.unique())
    return Selection(frame, layout, [name[7:] for name in split_by], differ)


def restates(frame: pd.DataFrame, param: str, layout: Layout) -> bool:
    """Whether a param only says again what a row or column key says: one value per key value,
    and the same setting (its own name, or a key of that config group, e.g. `dataset/fraction`
    for `fraction`, `strategy/_target_` for `strategy`). `trainer/max_epochs` that follows the
    fraction is not that: a reader must be told."""
    leaf = param[7:].rsplit("/", 1)[-1]
    for key in (*layout.rows, *layout.columns):
        name = column(frame, key)
        bare = name.split(".", 1)[1] if "." in name else name
        if name == param or name not in frame:
            continue
        same_setting = leaf == bare.rsplit("/", 1)[-1] or param[7:].startswith(f"{bare}/")
        pairs = frame[[name, param]].dropna().astype(str).drop_duplicates()
        if same_setting and not pairs[name].duplicated().any():
            return True
    return False


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
    """Per column of two or more cells, every cell whose printed mean is the best printed mean."""
    pick = max if grid.layout.mode == "max" else min
    best = set()
    for col in grid.column_labels:
        shown = {
            row: float(grid.number(grid.cells[row, col].mean))
            for row in grid.row_labels
            if (row, col) in grid.cells
        }
        if len(shown) > 1:
            top = pick(shown.values())
            best |= {(row, col) for row, value in shown.items() if value == top}
    return best
