"""RESULTS.md, table.{md,tex,csv} and the plots of the transfer table, from its MLflow runs (the
report is also logged as a kind=report run). Regenerate: `.venv/bin/python
experiments/transfer_table/results.py` (MLFLOW_TRACKING_URI picks another store)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install

from mlflow import MlflowClient  # noqa: E402

from src.report import plots  # noqa: E402
from src.report.build import Report, write_report  # noqa: E402
from src.report.query import Query, runs_frame, search  # noqa: E402
from src.report.table import Grid, Layout, aggregate, newest_per_seed  # noqa: E402

EXPERIMENT = "transfer_table"
STRATEGIES = ("scratch", "linear_probe", "feature_extract", "finetune", "lp_ft", "partial")
PRETRAINED = STRATEGIES[1:]
FRACTIONS = {"0.01": "1%", "0.1": "10%", "1.0": "100%"}


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


def main() -> None:
    uri = os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/outputs/transfer_table/mlflow.db"
    )
    query = Query(uri, (EXPERIMENT,), {}, "FINISHED")
    layout = Layout(
        rows=("strategy",), columns=("dataset", "fraction"), metric="test/acc",
        row_order=STRATEGIES,
        column_order=tuple(f"{d} / {f}" for d in ("fashion_mnist", "mnist") for f in FRACTIONS),
    )  # fmt: skip
    report = Report(
        query, layout, output_dir=HERE, stem="table",
        title="Test accuracy (%) of pretrained EfficientNet-Lite0 by strategy, mean ± std over 3 seeds",
        plots={"data_efficiency": {"x": "fraction", "line": "strategy", "panel": "dataset"}},
        experiment="reports", run_name=f"report-{EXPERIMENT}",
        artifact_location=str(ROOT / "mlartifacts"),
    )  # fmt: skip
    write_report(report)
    frame = query.keep(runs_frame(search(query)))
    grid = aggregate(frame, layout)
    datasets = sorted({col.split(" / ")[0] for col in grid.column_labels})
    # Learning curves of the 100% runs of the first data set: how the strategies get there.
    full = newest_per_seed(frame, ("dataset", "fraction", "strategy"), "seed")
    full = full[(full["tags.fraction"] == "1.0") & (full["tags.dataset"] == datasets[0])]
    plots.learning_curves(
        full, HERE / "learning_curves.png", "val/acc", MlflowClient(uri), line="strategy"
    )
    lines = [
        "# Transfer table: results",
        "",
        f"{len(frame)} finished runs in MLflow experiment `{EXPERIMENT}` "
        f"(store `{uri.split('///')[-1].replace(str(ROOT) + '/', '')}`). Protocol and caps: "
        "[README.md](README.md). Regenerate everything: `bash experiments/transfer_table/run.sh`; "
        "only this page from the runs: `.venv/bin/python experiments/transfer_table/results.py`.",
        "",
        "## Headline",
        "",
        "**Does pretrained beat scratch at 1% (2 training + 1 validation image per class)?**",
        *[pretrained_vs_scratch(grid, d) for d in datasets],
        "",
        "**Does LP-FT match or beat plain fine-tuning?**",
        *lpft_vs_finetune(grid, datasets),
        "",
        "## Table",
        "",
        "Columns: data set / fraction of the 300-per-class pool; bold: the best strategy there.",
        "Also as [LaTeX](table.tex) ([compilable](table_document.tex)) and [CSV](table.csv).",
        "",
        (HERE / "table.md").read_text().strip(),
        "",
        "## Plots",
        "",
        "![data efficiency](data_efficiency.png)",
        "",
        f"Validation accuracy per step of the 100% runs on {datasets[0]} (mean ± std over seeds):",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines[:20]))


if __name__ == "__main__":
    main()
