"""One report: query the runs, aggregate, render every format and plot, log it all to MLflow."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path

from src.errors import InvalidInput
from src.outputs import check_output_folder
from src.report import plots, render
from src.report.query import Query, search
from src.report.table import Grid, Layout, Selection, aggregate, select

log = logging.getLogger(__name__)
KIND = "report"
FORMATS = ("md", "tex", "csv")
# plot name (a function of src.report.plots) -> its file name
PLOT_FILES = {
    "data_efficiency": "data_efficiency",
    "learning_curves": "learning_curves",
    "transferability": "similarity_vs_gain",
    "imagenet_vs_transfer": "imagenet_vs_transfer",
    "reliability": "reliability",  # kind=calibrated runs: +plots.reliability={}
}


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
    labels: dict[str, str] = field(default_factory=dict)  # key or value -> the words shown

    def check(self) -> None:
        """Bad input is refused before any search or run."""
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise InvalidInput(f"formats={unknown}: unknown; choose from {list(FORMATS)}.")
        unknown = sorted(set(self.plots) - set(PLOT_FILES))
        if unknown:
            raise InvalidInput(f"plots={unknown}: unknown; choose from {list(PLOT_FILES)}.")
        digits, scale = self.layout.digits, self.layout.scale
        if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 10:
            raise InvalidInput(f"digits={digits!r}: decimals shown, an integer in [0, 10].")
        if not scale > 0:
            raise InvalidInput(f"scale={scale!r}: the factor scores are shown at (100: %), > 0.")

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


def table_files(grid: Grid, report: Report, selection: Selection) -> list[Path]:
    notes = {"split_by": selection.split_by, "differ": selection.differ}
    texts = {
        "md": render.markdown(grid, report.title, notes, report.labels),
        "tex": render.latex(grid, report.title, notes=notes, labels=report.labels),
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


def plot_files(client, selection: Selection, report: Report) -> list[Path]:
    """The configured plots of the table's own runs (the selection); a plot without data is left
    out. Each plot gets the table's metric, keys, scale, title and labels (and the client) where
    it takes them; its spec wins."""
    layout = selection.layout
    context = {
        "metric": layout.metric,
        "scale": layout.scale,
        "client": client,
        "keys": (*layout.rows, *layout.columns),
        "title": report.title,
        "labels": report.labels,
    }
    made = []
    for name, spec in report.plots.items():
        draw = getattr(plots, name)
        accepted = inspect.signature(draw).parameters
        kwargs = {key: value for key, value in context.items() if key in accepted} | spec
        path = draw(selection.frame, report.output_dir / f"{PLOT_FILES[name]}.png", **kwargs)
        if path is None:
            log.info("Plot %s left out: nothing to draw from these runs", name)
        made.append(path)
    return [path for path in made if path is not None]


def write_report(report: Report) -> list[Path]:
    """Writes the files and logs them as artifacts of a kind=report run; returns the paths."""
    from mlflow import MlflowClient

    from src.tracking.runs import mlflow_run
    from src.tracking.store import done_line

    # 1. Refuse bad input and an empty query before any run exists.
    report.check()
    check_output_folder(report.output_dir, "output_dir")
    frame = search(report.query)
    selection = select(frame, report.layout)
    grid = aggregate(selection.frame, selection.layout)
    if not grid.cells:
        raise InvalidInput(
            f"No run matched with metric {report.layout.metric!r} "
            f"(experiments={list(report.query.experiments)}, kind={report.query.kind!r}, "
            f"filter={report.query.filter_string()!r})."
        )
    shape = (len(grid.row_labels), len(grid.column_labels))
    log.info(
        "%d runs of kind %s, %d counted, %d cells in a %d x %d table",
        len(frame),
        report.query.kind or "*",
        len(selection.frame),
        len(grid.cells),
        *shape,
    )
    # 2. The files (table and plots from the one selection), then the run that records them.
    report.output_dir.mkdir(parents=True, exist_ok=True)
    paths = table_files(grid, report, selection)
    paths += plot_files(MlflowClient(report.query.tracking_uri), selection, report)
    tags = {"kind": KIND, "metric": report.layout.metric}
    with mlflow_run(
        report.query.tracking_uri,
        report.experiment,
        report.artifact_location,
        report.run_name,
        tags,
        report.params(),
    ) as (client, run_id):
        for path in paths:
            client.log_artifact(run_id, str(path))
        client.set_tag(run_id, "runs", str(len(selection.frame)))
        if selection.split_by:
            client.set_tag(run_id, "split_by", ",".join(selection.split_by))
    for path in paths:
        log.info("wrote %s", path)
    log.info(done_line(run_id, report.output_dir, report.query.tracking_uri))
    return paths
