"""The ranking table of a sweep (`python -m src.similarity -m backbone=a,b dataset=x,y`): which
backbone each score expects to transfer best to each data set, written when the sweep ends."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

COLUMNS = ("logme", "leep", "nce", "hscore", "knn_acc", "linear_acc", "nleep", "parc", "sfda")
DOMAIN = ("domain_similarity", "emd", "frechet", "mmd")


def ranking(rows: list[dict], by: str = "logme") -> list[dict]:
    """One row per (data set, source, backbone), ranked within each (data set, source) by `by`.
    Data sets are told apart by their images (dataset_key), e.g. two corruption severities."""
    group = lambda r: (r["dataset"], r.get("dataset_key", ""), r["source"])  # noqa: E731
    table, previous, rank = [], None, 0
    for row in sorted(rows, key=lambda r: (*group(r), -r[by])):
        rank = 1 if group(row) != previous else rank + 1
        previous = group(row)
        scores = {k: row[k] for k in (*COLUMNS, *DOMAIN) if k in row}
        names = {k: row[k] for k in ("dataset", "dataset_key", "source") if k in row}
        table.append({**names, f"rank ({by})": rank, "backbone": row["backbone"], **scores})
    return table


class WriteRanking(Callback):
    """Hydra callback: the sweep's scores.json files -> ranking.{md,csv} in the sweep directory,
    and as artifacts of an MLflow run tagged kind=similarity_ranking."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from src.tracking.runs import mlflow_run
        from src.tracking.store import done_line
        from src.tracking.tables import write_table

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/scores.json"))]
        if not rows:
            return
        files = write_table(ranking(rows), sweep_dir, "ranking")
        tags = {"kind": "similarity_ranking", "jobs": str(len(rows))}
        with mlflow_run(
            config.paths.tracking_uri,
            config.experiment_name,
            config.paths.artifact_location,
            "ranking",
            tags,
            {},
        ) as (client, run_id):
            for path in files:
                client.log_artifact(run_id, str(path))
        log.info("Ranking of %d jobs:\n%s", len(rows), files[1].read_text())
        log.info(done_line(run_id, sweep_dir, config.paths.tracking_uri))
