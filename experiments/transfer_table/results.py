"""RESULTS.md, table.{md,tex,csv} and the plots of the transfer table, from its MLflow runs (the
report is also logged as a kind=report run). Regenerate: `.venv/bin/python
experiments/transfer_table/results.py` (MLFLOW_TRACKING_URI picks another store).

Without the store (it lives in outputs/, not in git), the tables, the data-efficiency plot and this
page are rebuilt from table.csv, the cells the runs gave; the learning curves need the runs'
histories and are then left out (bash run.sh makes them again)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Where the page, tables and plots go (REPORT_DIR: elsewhere, e.g. for a smoke-sized run).
REPORT = Path(os.environ.get("REPORT_DIR", HERE))
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install

import csv  # noqa: E402

import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from src.report import plots, render  # noqa: E402
from src.report.build import Report, write_report  # noqa: E402
from src.report.labels import key_label, metric_label  # noqa: E402
from src.report.query import Query, search  # noqa: E402
from src.report.table import Cell, Grid, Layout, aggregate, best_cells, select  # noqa: E402

sys.path.insert(0, str(HERE))
import verdicts  # noqa: E402

EXPERIMENT = "transfer_table"
STRATEGIES = ("scratch", "linear_probe", "feature_extract", "finetune", "lp_ft", "partial")
PRETRAINED = STRATEGIES[1:]
FRACTIONS = {"0.01": "1%", "0.1": "10%", "1.0": "100%"}
TITLE = "Transfer from ImageNet: EfficientNet-Lite0 by strategy on 1%, 10% and 100% of the data"
# All 60,000 Fashion-MNIST training images: the strategies the feature and prefix caches make
# affordable on a CPU (the rest would train the whole backbone on 54,000 images per epoch).
FULL_EXPERIMENT = "transfer_table_full"
FULL_STRATEGIES = ("linear_probe", "feature_extract", "finetune")
FULL_TITLE = "EfficientNet-Lite0 on all 60,000 Fashion-MNIST training images"
FULL_LAYOUT = Layout(
    rows=("strategy",), columns=("dataset",), metric="test/acc", row_order=FULL_STRATEGIES
)
LAYOUT = Layout(
    rows=("strategy",),
    columns=("dataset", "fraction"),
    metric="test/acc",
    row_order=STRATEGIES,
    column_order=tuple(f"{d} / {f}" for d in ("fashion_mnist", "mnist") for f in FRACTIONS),
)
# What differs between cells by protocol (run.sh): epochs follow the fraction, LP-FT probes a third.
PROTOCOL = {"trainer/max_epochs": ["6", "15", "30"], "strategy/probe_epochs": ["2", "5", "10"]}


def cell_text(grid: Grid, column: str, strategy: str) -> str:
    return f"{grid.text(strategy, column)} ({strategy})"


def pretrained_vs_scratch(grid: Grid, dataset: str) -> str:
    """At 1%: the best pretrained strategy against scratch, in points, with both stds."""
    col = f"{dataset} / 0.01"
    scratch = grid.cells.get(("scratch", col))
    done = [s for s in PRETRAINED if (s, col) in grid.cells]
    if scratch is None or not done:
        return f"- {dataset}: not measured yet."
    best = max(done, key=lambda s: grid.cells[(s, col)].mean)
    worst = min(done, key=lambda s: grid.cells[(s, col)].mean)
    gap = (grid.cells[(best, col)].mean - scratch.mean) * 100
    beaten = sum(grid.cells[(s, col)].mean > scratch.mean for s in done)
    return (
        f"- {dataset}: **{'yes' if gap > 0 else 'no'}**, {gap:+.1f} points: "
        f"{cell_text(grid, col, best)} against {cell_text(grid, col, 'scratch')}; "
        f"{beaten} of {len(done)} pretrained strategies beat scratch "
        f"(weakest: {cell_text(grid, col, worst)})."
    )


def lpft_vs_finetune(grid: Grid, datasets: list[str]) -> list[str]:
    """Every (dataset, fraction) cell: LP-FT minus finetune, and whether it is inside the noise."""
    lines, wins, cells = [], 0, 0
    for dataset in datasets:
        for fraction, name in FRACTIONS.items():
            col = f"{dataset} / {fraction}"
            lp, ft = grid.cells.get(("lp_ft", col)), grid.cells.get(("finetune", col))
            if lp is None or ft is None:
                continue
            gap = (lp.mean - ft.mean) * 100
            noise = max(0.0 if math.isnan(s) else s for s in (lp.std, ft.std)) * 100
            cells, wins = cells + 1, wins + (lp.mean >= ft.mean)
            verdict = (
                "within one std" if abs(gap) <= noise else ("LP-FT" if gap > 0 else "finetune")
            )
            lines.append(
                f"  - {dataset} at {name}: {gap:+.1f} points "
                f"({grid.text('lp_ft', col)} vs {grid.text('finetune', col)}; {verdict})"
            )
    head = f"- LP-FT ≥ finetune in **{wins} of {cells}** cells:"
    return [head, *lines]


def artifacts_beside(uri: str) -> Path:
    """The report run's artifacts beside a sqlite store (the study's folder), else the project's."""
    if uri.startswith("sqlite:///"):
        return Path(uri.split("sqlite:///", 1)[-1]).parent / "mlartifacts"
    return ROOT / "mlartifacts"


def from_runs(uri: str, experiment: str = EXPERIMENT) -> tuple[Grid, int, str]:
    """The report from the MLflow runs: tables, data efficiency and learning curves (the pool);
    tables only (the full training set)."""
    pool = experiment == EXPERIMENT
    layout, stem, title = (
        (LAYOUT, "table", TITLE) if pool else (FULL_LAYOUT, "table_full", FULL_TITLE)
    )
    query = Query(uri, (experiment,), {}, "FINISHED")
    report = Report(
        query,
        layout,
        output_dir=REPORT,
        stem=stem,
        title=title,
        plots={"data_efficiency": {"x": "fraction", "line": "strategy", "panel": "dataset"}}
        if pool
        else {},
        experiment="reports",
        run_name=f"report-{experiment}",
        artifact_location=str(artifacts_beside(uri)),
    )
    selection = select(search(query), layout)
    if selection.split_by:  # the headline reads cells by strategy: a split row has another name
        raise SystemExit(
            f"{experiment}: runs of one cell differ in {selection.split_by} (a rerun after a "
            "config change?). Move the old runs to another store, or re-run run.sh into a new one."
        )
    write_report(report)
    grid = aggregate(selection.frame, selection.layout)
    if pool:
        plots.learning_curves(
            selection.frame,
            REPORT / "learning_curves.png",
            "val/acc",
            MlflowClient(uri),
            line="strategy",
            panel="dataset",
            keys=("fraction",),
            title=TITLE,
        )
    where = uri.split("///")[-1].replace(str(ROOT) + "/", "")
    return grid, len(selection.frame), f"MLflow experiment `{experiment}` (store `{where}`)"


def from_csv(path: Path) -> tuple[Grid, int, str]:
    """The tables (and for the pool the data-efficiency plot) from a table's CSV cells (unrounded
    mean, std, n)."""
    pool = path.stem == "table"
    layout, title = (LAYOUT, TITLE) if pool else (FULL_LAYOUT, FULL_TITLE)
    rows = list(csv.DictReader(path.open()))
    cells = {
        (r["row"], r["column"]): Cell(float(r["mean"]), float(r["std"] or "nan"), int(r["n"]))
        for r in rows
        if r["mean"]
    }
    columns = layout.column_order or sorted({k[1] for k in cells})
    grid = Grid(
        layout,
        [s for s in STRATEGIES if any(k[0] == s for k in cells)],
        [c for c in columns if any(k[1] == c for k in cells)],
        cells,
        set(),
        max(cell.n for cell in cells.values()),
    )
    grid.best = best_cells(grid)
    notes = {"differ": PROTOCOL} if pool else {}
    texts = {
        "md": render.markdown(grid, title, notes),
        "tex": render.latex(grid, title, notes=notes),
        "csv": render.csv_text(grid),
    }
    for fmt, text in texts.items():
        (REPORT / f"{path.stem}.{fmt}").write_text(text)
    (REPORT / f"{path.stem}_document.tex").write_text(render.latex_document(texts["tex"]))
    runs = sum(cell.n for cell in cells.values())
    source = f"`{path.name}` (the MLflow store of these runs is not in the repository)"
    if not pool:
        return grid, runs, source
    stats = pd.DataFrame(
        [
            {
                "panel": col.split(" / ")[0],
                "x": float(col.split(" / ")[1]),
                "line": plots.value_label("strategy", row),
                "mean": cell.mean,
                "std": cell.std,
            }
            for (row, col), cell in cells.items()
        ]
    )
    axes = (key_label("fraction"), metric_label(LAYOUT.metric, LAYOUT.scale), "dataset")
    plots.stats_panels(
        stats,
        REPORT / "data_efficiency.png",
        axes,
        LAYOUT.scale,
        "log",
        plots.bounds(LAYOUT.metric, LAYOUT.scale),
        TITLE,
        percent_x=True,
    )
    (REPORT / "learning_curves.png").unlink(missing_ok=True)  # needs the runs' histories
    return grid, runs, source


def full_data(grid: Grid | None, pool: Grid) -> list[str]:
    """The best full-training-set accuracy, against the same strategy on the 300-per-class pool."""
    if grid is None or not grid.cells:
        return ["- Not measured yet (`bash experiments/transfer_table/run.sh` runs it)."]
    column = grid.column_labels[0]
    best = max(grid.cells, key=lambda key: grid.cells[key].mean)[0]
    lines = [f"- **{grid.text(best, column)}** ({best}), the best of {', '.join(grid.row_labels)}."]
    for strategy in grid.row_labels:
        small = pool.cells.get((strategy, "fashion_mnist / 1.0"))
        if small is not None:
            gain = (grid.cells[(strategy, column)].mean - small.mean) * 100
            lines.append(
                f"  - {strategy}: {grid.text(strategy, column)} on 54,000 training images against "
                f"{pool.text(strategy, 'fashion_mnist / 1.0')} on 2,700 ({gain:+.1f} points)."
            )
    return lines


def mean_std_headlines(grid: Grid, full: Grid | None, datasets: list[str]) -> list[str]:
    """The headline without per-image predictions (a page rebuilt from table.csv): mean ± std."""
    return [
        "Without the runs' per-image predictions (rebuilt from table.csv): mean ± std over seeds, "
        "no intervals; `bash experiments/transfer_table/run.sh` gives them.",
        "",
        "**Best test accuracy on all of Fashion-MNIST's training set (60,000 images, 64 px)?**",
        *full_data(full, grid),
        "",
        "**Does pretrained beat scratch at 1% (2 training + 1 validation image per class)?**",
        *[pretrained_vs_scratch(grid, d) for d in datasets],
        "",
        "**Does LP-FT match or beat plain fine-tuning?**",
        *lpft_vs_finetune(grid, datasets),
        "",
    ]


def main() -> None:
    uri = os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/outputs/transfer_table/mlflow.db"
    )
    store = Path(uri.split("sqlite:///", 1)[-1])
    has_runs = not uri.startswith("sqlite:///") or store.is_file()
    grid, runs, source = from_runs(uri) if has_runs else from_csv(REPORT / "table.csv")
    full, full_runs, full_source = None, 0, ""
    if has_runs and MlflowClient(uri).get_experiment_by_name(FULL_EXPERIMENT) is not None:
        full, full_runs, full_source = from_runs(uri, FULL_EXPERIMENT)
    elif not has_runs and (REPORT / "table_full.csv").is_file():
        full, full_runs, full_source = from_csv(REPORT / "table_full.csv")
    datasets = sorted({col.split(" / ")[0] for col in grid.column_labels})
    cache = store.parent / "cache" / "report"
    headlines, details = verdicts.section(uri, cache) if has_runs else ([], [])
    curves = (
        [
            "Validation accuracy by epoch, per strategy, data set and fraction (mean ± std over seeds):",
            "",
            "![learning curves](learning_curves.png)",
            "",
        ]
        if (REPORT / "learning_curves.png").is_file()
        else [
            "Learning curves need the runs' metric histories: `bash experiments/transfer_table/run.sh`"
            " makes them (`learning_curves.png`).",
            "",
        ]
    )
    full_table = (
        [
            "## All 60,000 training images",
            "",
            f"{full_runs} finished runs, read from {full_source}. Same test images as above; "
            "54,000 training + 6,000 validation images, 6 epochs (fine-tuning: 8, `FULL_EPOCHS`). Also as [LaTeX](table_full.tex) "
            "and [CSV](table_full.csv).",
            "",
            (REPORT / "table_full.md").read_text().strip(),
            "",
        ]
        if full is not None
        else []
    )
    lines = [
        "# Transfer table: results",
        "",
        f"{runs} finished runs, read from {source}. Protocol and caps: "
        "[README.md](README.md). Regenerate everything: `bash experiments/transfer_table/run.sh`; "
        "only this page: `.venv/bin/python experiments/transfer_table/results.py`.",
        "",
        "## Headline",
        "",
        *(headlines or mean_std_headlines(grid, full, datasets)),
        *details,
        "## Table",
        "",
        "Columns: data set / fraction of the 300-per-class pool; bold: the best strategy there.",
        "Also as [LaTeX](table.tex) ([compilable](table_document.tex)) and [CSV](table.csv).",
        "",
        (REPORT / "table.md").read_text().strip(),
        "",
        *full_table,
        "## Plots",
        "",
        "![data efficiency](data_efficiency.png)",
        "",
        *curves,
    ]
    (REPORT / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
