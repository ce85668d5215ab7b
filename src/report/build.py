"""One report: query the runs, aggregate, render every format and plot, log it all to MLflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from src.errors import InvalidInput
from src.report import plots, render
from src.report.query import Query, runs_frame, search
from src.report.table import Grid, Layout, aggregate, newest_per_seed

log = logging.getLogger(__name__)
KIND = "report"
FORMATS = ("md", "tex", "csv")
PLOTS = ("data_efficiency", "learning_curves", "transferability", "imagenet_vs_transfer")


@dataclass(frozen=True)
class Report:
    query: Query
    layout: Layout
    output_dir: Path
    stem: str = "table"
    formats: tuple[str, ...] = FORMATS
    title: str = ""
    plots: dict[str, dict] = field(default_factory=dict)  # plot name -> its keyword arguments
    experiment: str = "reports"  # where the kind=report run goes
    run_name: str = "report"
    artifact_location: str | None = None

    def check(self) -> None:
        """Bad input is refused before any search or run."""
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise InvalidInput(f"formats={unknown}: unknown; choose from {list(FORMATS)}.")
        unknown = sorted(set(self.plots) - set(PLOTS))
        if unknown:
            raise InvalidInput(f"plots={unknown}: unknown; choose from {list(PLOTS)}.")

    def params(self) -> dict[str, str]:
        layout = self.layout
        return {
            **self.query.as_params(),
            "rows": ",".join(layout.rows),
            "columns": ",".join(layout.columns),
            "metric": layout.metric,
            "seed": layout.seed,
            "mode": layout.mode,
        }


def table_files(grid: Grid, report: Report) -> list[Path]:
    texts = {
        "md": render.markdown(grid, report.title),
        "tex": render.latex(grid, report.title),
        "csv": render.csv_text(grid),
    }
    paths = []
    for fmt in report.formats:
        paths.append(report.output_dir / f"{report.stem}.{fmt}")
        paths[-1].write_text(texts[fmt])
    if "tex" in report.formats:  # the same table, wrapped to compile on its own
        paths.append(report.output_dir / f"{report.stem}_document.tex")
        paths[-1].write_text(render.latex_document(texts["tex"]))
    return paths


def plot_files(client, frame, report: Report) -> list[Path]:
    """The configured plots of the table's runs; a plot without data is left out."""
    layout, out = report.layout, report.output_dir
    made = []
    if "data_efficiency" in report.plots:
        spec = {"metric": layout.metric, "seed": layout.seed, **report.plots["data_efficiency"]}
        made.append(
            plots.data_efficiency(frame, out / "data_efficiency.png", scale=layout.scale, **spec)
        )
    if "learning_curves" in report.plots:
        spec = {"metric": "val/acc", **report.plots["learning_curves"]}
        made.append(
            plots.learning_curves(
                client, frame, out / "learning_curves.png", scale=layout.scale, **spec
            )
        )
    if "imagenet_vs_transfer" in report.plots:
        spec = {
            "metric": layout.metric,
            "seed": layout.seed,
            **report.plots["imagenet_vs_transfer"],
        }
        made.append(
            plots.imagenet_vs_transfer(
                frame, out / "imagenet_vs_transfer.png", scale=layout.scale, **spec
            )
        )
    if "transferability" in report.plots:
        spec = report.plots["transferability"]
        made.append(
            plots.transferability(frame, out / "similarity_vs_gain.png", scale=layout.scale, **spec)
        )
    return [path for path in made if path is not None]


def write_report(report: Report) -> list[Path]:
    """Writes the files and logs them as artifacts of a kind=report run; returns the paths."""
    from mlflow import MlflowClient

    from src.similarity.tracking import mlflow_run

    # 1. Refuse bad input and an empty query before any run exists.
    report.check()
    frame = report.query.keep(runs_frame(search(report.query)))
    grid = aggregate(frame, report.layout)
    if not grid.cells:
        raise InvalidInput(
            f"No run matched with metric {report.layout.metric!r} "
            f"(experiments={list(report.query.experiments)}, filter={report.query.filter_string()!r})."
        )
    shape = (len(grid.row_labels), len(grid.column_labels))
    log.info("%d runs, %d cells in a %d x %d table", len(frame), len(grid.cells), *shape)
    # 2. The files, then the run that records them with the query.
    report.output_dir.mkdir(parents=True, exist_ok=True)
    paths = table_files(grid, report)
    table_runs = newest_per_seed(
        frame, (*report.layout.rows, *report.layout.columns), report.layout.seed
    )
    paths += plot_files(MlflowClient(report.query.tracking_uri), table_runs, report)
    tags = {"kind": KIND, "metric": report.layout.metric}
    with mlflow_run(
        report.query.tracking_uri, report.experiment, report.artifact_location, report.run_name,
        tags, report.params(),
    ) as (client, run_id):  # fmt: skip
        for path in paths:
            client.log_artifact(run_id, str(path))
        client.set_tag(run_id, "runs", str(len(frame)))
    return paths
