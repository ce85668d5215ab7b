"""The `kind` of a run, what reports select by: `train` (a plain run, a -m grid point),
`sweep_trial`, `advise_search`, `advise_data`, src.posthoc's models (`calibrated`, `wise_ft`,
`soup`); parents and other tools' runs have their own
(`sweep`, `grid`, `advise`, `similarity`, `report`)."""

from __future__ import annotations

import pandas as pd

TRAIN = "train"


def run_kind(frame: pd.DataFrame) -> pd.Series:
    """Each run's kind (mlflow.search_runs' frame): its `kind` tag, else what the tags of runs
    logged before that tag existed say (`optuna.trial.number`, `advise_stage`), else `train`."""
    kind = pd.Series(TRAIN, index=frame.index, dtype=object)
    if "tags.advise_stage" in frame:
        stage = frame["tags.advise_stage"]
        kind = kind.mask(stage.notna(), "advise_" + stage.astype(str))
    if "tags.optuna.trial.number" in frame:
        kind = kind.mask(frame["tags.optuna.trial.number"].notna(), "sweep_trial")
    if "tags.kind" in frame:
        kind = frame["tags.kind"].where(frame["tags.kind"].notna(), kind)
    return kind
