"""Which runs a report reads: `mlflow.search_runs` (one row per run), then the runs of one kind.

A key names a tag or a param: `tags.strategy` and `params.optimizer/lr` say which; a bare name
(`strategy`) is a tag when some run carries that tag, else a param, so configs stay short.

Kinds: plain training runs (`train`, a -m grid's points included), Optuna trials (`sweep_trial`),
the advisor's search trials and data runs (`advise_search`, `advise_data`); parents and other
tools' runs have their own (`sweep`, `grid`, `advise`, `similarity`, `report`). A report reads one
kind (default `train`): a trial is a run with a sampled learning rate, pruned maybe, and must not
be averaged with the runs of a study. Runs logged before the `kind` tag existed get theirs from
the tags they do carry (`optuna.trial.number`, `advise_stage`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from src.errors import InvalidInput
from src.tracking.kinds import TRAIN, run_kind
from src.tracking.store import tracking

PREFIXES = ("tags.", "params.", "metrics.")
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")  # MLflow's RunStatus


@dataclass(frozen=True)
class Query:
    tracking_uri: str
    experiments: tuple[str, ...] = ()  # names; empty: every experiment in the store
    filters: dict[str, str | list[str]] = field(default_factory=dict)  # key -> value(s)
    status: str | None = "FINISHED"  # None: runs in any state
    kind: str | None = TRAIN  # the runs' kind (see the module docstring); None: every kind

    def __post_init__(self) -> None:  # a status MLflow never sets would match no run, unexplained
        if self.status is not None and self.status not in RUN_STATUSES:
            raise InvalidInput(f"status={self.status}: one of {list(RUN_STATUSES)}, or null (any).")

    def as_params(self) -> dict[str, str]:
        """The query as MLflow params of the report run, so a table says what made it."""
        return {
            "tracking_uri": self.tracking_uri,
            "experiments": ",".join(self.experiments) or "*",
            "filter": self.filter_string() or "*",
            "filters": json.dumps(self.filters, sort_keys=True),
            "kind": self.kind or "*",
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
        """The runs of the query's kind whose key takes one of a list-valued filter's values."""
        if self.kind and len(frame):
            frame = frame[run_kind(frame) == self.kind]
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


def experiment_ids(names: tuple[str, ...]) -> list[str]:
    """Ids of the named experiments; an unknown name is an error, not an empty table."""
    import mlflow

    every = {e.name: e.experiment_id for e in mlflow.search_experiments()}
    missing = sorted(set(names) - set(every))
    if missing:
        raise InvalidInput(f"No MLflow experiment named {missing}; the store has {sorted(every)}.")
    return [every[name] for name in names] if names else list(every.values())


def search(query: Query) -> pd.DataFrame:
    """The query's runs, one row per run: run_id, start_time, `tags.*`, `params.*`, `metrics.*`
    (mlflow.search_runs' frame), narrowed to the query's kind and list-valued filters."""
    import mlflow

    with tracking(query.tracking_uri):
        ids = experiment_ids(query.experiments)
        frame = mlflow.search_runs(ids, query.filter_string(), output_format="pandas")
    if "run_id" not in frame:  # no run at all: mlflow returns a frame without columns
        frame = pd.DataFrame(columns=["run_id", "start_time"])
    kept = query.keep(frame)
    if kept.empty and query.kind and not frame.empty:  # a kind no run has: name the ones there
        kinds = sorted(set(run_kind(frame)))
        if query.kind not in kinds:
            raise InvalidInput(
                f"kind={query.kind}: no run of that kind; the runs found are of kinds {kinds} "
                "(kind=null: every kind)."
            )
    return kept


def column(frame: pd.DataFrame, key: str) -> str:
    """The frame column a key names (see the module docstring)."""
    if key.startswith(PREFIXES) or key in ("run_id", "start_time"):
        return key
    for candidate in (f"tags.{key}", f"params.{key}"):
        if candidate in frame.columns:
            return candidate
    return f"tags.{key}"
