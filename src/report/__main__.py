"""`python -m src.report rows=[dataset] columns=[strategy] metric=test/acc +filters.study=X`

Reads runs from an MLflow store, writes table.{md,tex,csv} (and table_document.tex, which
compiles as-is) plus PNG plots to the output directory, and logs them as artifacts of an MLflow
run tagged kind=report whose params record the query. See conf/report.yaml.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.cli import entry_point

log = logging.getLogger(__name__)


def report_from_config(cfg: DictConfig):
    """The Report a config describes (heavy imports here, not at import: `--help` stays fast)."""
    from src.report.build import Report
    from src.report.query import Query
    from src.report.table import Layout

    filters = OmegaConf.to_container(cfg.filters, resolve=True)
    plots = OmegaConf.to_container(cfg.plots, resolve=True) if cfg.plots else {}
    query = Query(cfg.tracking_uri, tuple(cfg.experiments), filters, cfg.status, cfg.kind)
    layout = Layout(
        rows=tuple(cfg.rows),
        columns=tuple(cfg.columns),
        metric=cfg.metric,
        seed=cfg.seed,
        mode=cfg.mode,
        scale=float(cfg.scale),
        digits=cfg.digits,
        row_order=tuple(map(str, cfg.row_order)),
        column_order=tuple(map(str, cfg.column_order)),
    )
    return Report(
        query,
        layout,
        output_dir=Path(cfg.output_dir),
        stem=cfg.stem,
        formats=tuple(cfg.formats),
        title=cfg.title,
        plots={name: spec for name, spec in plots.items() if spec is not None},
        experiment=cfg.report_experiment,
        run_name=cfg.run_name,
        artifact_location=cfg.paths.artifact_location,
        labels={str(k): str(v) for k, v in (cfg.get("labels") or {}).items()},
    )


@entry_point("report", stores=lambda cfg: {"tracking_uri": cfg.tracking_uri})
def main(cfg: DictConfig) -> None:
    from src.errors import InvalidInput
    from src.report.build import write_report
    from src.tracking.store import missing_sqlite_store

    database = missing_sqlite_store(str(cfg.tracking_uri))
    if database is not None:  # a report reads runs: it never makes an empty store to find none
        raise InvalidInput(f"tracking_uri: no MLflow store at {database}, so no runs to report.")
    write_report(report_from_config(cfg))  # its last line: the report run and folder


if __name__ == "__main__":
    main()
