"""The advisor's MLflow parent run (tag kind=advise), found again by the advice key on a re-run,
and the runs of each stage, found by their tags (advise_key, advise_stage, ...)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow import MlflowClient

from src.tracking.runs import reopen, run_status, start_run

log = logging.getLogger(__name__)

KIND = "advise"
PARENT = "mlflow.parentRunId"


def advice_key(settings: dict) -> str:
    """What a re-run must share to resume: data set, candidates, spaces, fractions (not the budget)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def find_runs(client: MlflowClient, experiment: str, tags: dict[str, str], finished: bool = True):
    """Runs of `experiment` carrying every tag, newest first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if finished:
        clauses.append("attributes.status = 'FINISHED'")
    return list(
        client.search_runs(
            [found.experiment_id],
            " and ".join(clauses),
            order_by=["attributes.start_time DESC"],
            max_results=500,
        )
    )


@contextmanager
def parent_run(
    tracking_uri: str, experiment: str, artifact_location: str | None, key: str, tags: dict
) -> Iterator[tuple[MlflowClient, str]]:
    """The advice's parent run: the newest one with this key is reopened (a re-run continues it),
    else a new one. Ends FINISHED, or FAILED/KILLED with the error as a tag."""
    client = MlflowClient(tracking_uri)
    previous = find_runs(client, experiment, {"kind": KIND, "advise_key": key}, finished=False)
    if previous:
        run_id = reopen(client, previous[0].info.run_id)
        log.info("Advice %s: continuing MLflow run %s", key, run_id)
    else:
        run_id = start_run(
            client,
            experiment,
            artifact_location,
            f"advise-{tags.get('dataset', '')}-{key}",
            {"kind": KIND, "advise_key": key, **tags},
        )
        log.info("Advice %s: MLflow run %s in %s", key, run_id, experiment)
    with run_status(client, run_id):
        yield client, run_id
