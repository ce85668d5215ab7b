"""Which runs a report reads: one MLflow search, turned into a flat table (one row per run).

A key names a tag or a param: `tags.strategy` and `params.optimizer/lr` say which; a bare name
(`strategy`) is a tag when some run carries that tag, else a param, so configs stay short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
from mlflow import MlflowClient

from src.errors import InvalidInput

PREFIXES = ("tags.", "params.", "metrics.")


@dataclass(frozen=True)
class Query:
    tracking_uri: str
    experiments: tuple[str, ...] = ()  # names; empty: every experiment in the store
    filters: dict[str, str | list[str]] = field(default_factory=dict)  # key -> value(s)
    status: str | None = "FINISHED"  # None: runs in any state

    def as_params(self) -> dict[str, str]:
        """The query as MLflow params of the report run, so a table says what made it."""
        return {
            "tracking_uri": self.tracking_uri,
            "experiments": ",".join(self.experiments) or "*",
            "filter": self.filter_string() or "*",
            "filters": json.dumps(self.filters, sort_keys=True),
        }

    def filter_string(self) -> str:
        """The MLflow filter: status and single-valued filters (MLflow has no IN for tags)."""
        clauses = [f"attributes.status = '{self.status}'"] if self.status else []
        for key, value in self.filters.items():
            if not isinstance(value, list | tuple):
                kind, name = prefixed(key).split(".", 1)
                clauses.append(f"{kind}.`{name}` = {quote(value)}")
        return " and ".join(clauses)

    def keep(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The runs whose key takes one of a list-valued filter's values."""
        for key, values in self.filters.items():
            if isinstance(values, list | tuple):
                name = prefixed(key)
                present = frame[name] if name in frame else pd.Series(None, index=frame.index)
                frame = frame[present.isin([str(v) for v in values])]
        return frame


def prefixed(key: str) -> str:
    return key if key.startswith(PREFIXES) else f"tags.{key}"


def quote(value) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def experiment_ids(client: MlflowClient, names: tuple[str, ...]) -> list[str]:
    """Ids of the named experiments; an unknown name is an error, not an empty table."""
    if not names:
        return [e.experiment_id for e in client.search_experiments()]
    found = {name: client.get_experiment_by_name(name) for name in names}
    missing = sorted(name for name, experiment in found.items() if experiment is None)
    if missing:
        known = sorted(e.name for e in client.search_experiments())
        raise InvalidInput(f"No MLflow experiment named {missing}; the store has {known}.")
    return [experiment.experiment_id for experiment in found.values()]


def search(query: Query) -> list:
    """Every matching run (MLflow pages at most 1000 at a time)."""
    client = MlflowClient(query.tracking_uri)
    ids = experiment_ids(client, query.experiments)
    runs, token = [], None
    while True:
        page = client.search_runs(ids, query.filter_string(), max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list) -> pd.DataFrame:
    """One row per run: run_id, start_time, and `tags.*`, `params.*`, `metrics.*` columns."""
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "start_time": run.info.start_time}
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "start_time"])


def column(frame: pd.DataFrame, key: str) -> str:
    """The frame column a key names (see the module docstring)."""
    if key.startswith(PREFIXES) or key in ("run_id", "start_time"):
        return key
    for candidate in (f"tags.{key}", f"params.{key}"):
        if candidate in frame.columns:
            return candidate
    return f"tags.{key}"
