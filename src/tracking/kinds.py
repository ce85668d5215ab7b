"""The `kind` of a run, what reports select by: `train` (a plain run, a -m grid point),
`sweep_trial`, `advise_search`, `advise_data`, src.posthoc's models (`calibrated`, `wise_ft`,
`soup`); parents and other tools' runs have their own
(`sweep`, `grid`, `advise`, `similarity`, `similarity_ranking`, `report`, `explain`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

TRAIN = "train"
POSTHOC_KINDS = ("calibrated", "wise_ft", "soup")  # src.posthoc's methods' `kind`
# Runs that hold a model src.eval, predict, export, explain and posthoc take.
MODEL_KINDS = (TRAIN, "sweep_trial", "advise_search", "advise_data", *POSTHOC_KINDS)
# Runs that hold none: parents of several runs and the other tools' own runs.
MODEL_LESS_KINDS = (
    "sweep",
    "grid",
    "advise",
    "similarity",
    "similarity_ranking",
    "report",
    "explain",
)


def model_less_line(run_id: str, kind: str) -> str:
    """The refusal of a run that holds no model, naming the kinds that do."""
    return (
        f"run_id={run_id} is a {kind} run: it holds no trained model; give the id of a run "
        f"that does (kind {', '.join(MODEL_KINDS)})."
    )


def run_kind(frame: pd.DataFrame) -> pd.Series:
    """Each run's kind (mlflow.search_runs' frame): its `kind` tag, else what the tags of runs
    logged before that tag existed say (`optuna.trial.number`, `advise_stage`), else `train`."""
    import pandas as pd

    kind = pd.Series(TRAIN, index=frame.index, dtype=object)
    if "tags.advise_stage" in frame:
        stage = frame["tags.advise_stage"]
        kind = kind.mask(stage.notna(), "advise_" + stage.astype(str))
    if "tags.optuna.trial.number" in frame:
        kind = kind.mask(frame["tags.optuna.trial.number"].notna(), "sweep_trial")
    if "tags.kind" in frame:
        kind = frame["tags.kind"].where(frame["tags.kind"].notna(), kind)
    return kind
