"""What src.explain refuses before any work: a malformed or unknown run id, a run that holds no
model (a similarity or report run), class names the model does not have, other classes in data."""

from __future__ import annotations

import re

from src.errors import InvalidInput
from src.tracking.kinds import MODEL_LESS_KINDS, model_less_line

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def check_run(run_id, tracking_uri: str) -> None:
    """A well-formed id of a run of this store that trained a model."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from src.tracking.store import missing_sqlite_store

    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise InvalidInput(f"run_id={run_id}: not an MLflow run id (32 hex digits, see the UI).")
    database = missing_sqlite_store(tracking_uri)
    if database is not None:
        raise InvalidInput(f"run_id={run_id}: no MLflow store at {database} (paths.tracking_uri).")
    try:
        tags = MlflowClient(tracking_uri).get_run(run_id).data.tags
    except MlflowException:
        raise InvalidInput(f"run_id={run_id}: no such MLflow run in {tracking_uri}.") from None
    kind = tags.get("kind", "train")
    if kind in MODEL_LESS_KINDS:
        raise InvalidInput(model_less_line(run_id, kind))


def check_classes_asked(asked, names: list[str], key: str = "classes") -> list[int]:
    """Indices of the asked class names (None: none asked); an unknown name lists the valid ones."""
    if asked is None:
        return []
    asked = [asked] if isinstance(asked, str | int) else list(asked)
    missing = [str(a) for a in asked if str(a) not in names]
    if missing:
        raise InvalidInput(f"{key}={missing}: the model has no such class; it has {names[:50]}.")
    return [names.index(str(a)) for a in asked]


def check_same_classes(model_names: list[str], data_names: list[str], dataset: str) -> None:
    if [str(n) for n in data_names] != [str(n) for n in model_names]:
        raise InvalidInput(
            f"dataset={dataset} has the classes {list(data_names)[:10]}, but the model was trained "
            f"on {list(model_names)[:10]}: explain it on data with the training's classes."
        )
