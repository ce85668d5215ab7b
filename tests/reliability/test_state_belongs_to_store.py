"""State kept beside the tracking store belongs to that store: a resumable Optuna study (sweeps
and the advisor share src.sweeps.runs.open_parent) continued under another store is refused in
one line, never reopened against runs that store does not have."""

from __future__ import annotations

import optuna
import pytest

from src.errors import InvalidInput
from src.sweeps import runs


def mlflow_cfg(tmp_path, name: str) -> dict:
    return {"tracking_uri": f"sqlite:///{tmp_path / name}.db", "experiment_name": "sweep"}


@pytest.mark.slow  # an MLflow store made from scratch: ~10 s on a busy machine
def test_a_study_continued_under_another_store_is_refused(tmp_path):
    study = optuna.create_study(study_name="lr")  # in memory: the storage is not the point
    store_a, store_b = mlflow_cfg(tmp_path, "a"), mlflow_cfg(tmp_path, "b")
    parent = runs.open_parent(study, store_a, {"metric": "val/acc"})
    assert study.user_attrs[runs.STORE_ATTR] == store_a["tracking_uri"]
    assert runs.open_parent(study, store_a, {}) == parent  # the same store: reopened

    with pytest.raises(InvalidInput) as refused:
        runs.open_parent(study, store_b, {})
    message = str(refused.value)
    assert "\n" not in message and "study 'lr' belongs to sqlite:///" in message
    assert f"a.db (its MLflow parent run {parent}), not to {store_b['tracking_uri']}" in message
    assert not (tmp_path / "b.db").exists()  # nothing made in store B


def test_a_study_without_its_store_recorded_is_refused_where_its_run_is_missing(tmp_path):
    study = optuna.create_study(study_name="old")
    study.set_user_attr(runs.PARENT_ATTR, "0123456789abcdef0123456789abcdef")  # made elsewhere
    with pytest.raises(InvalidInput, match="study 'old' belongs to another tracking store"):
        runs.open_parent(study, mlflow_cfg(tmp_path, "c"), {})


def test_a_study_continued_in_the_other_direction_is_one_line(tmp_path):
    from types import SimpleNamespace

    from src.sweeps.worker import Worker

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    sweeper = SimpleNamespace(
        pruner_cfg=None,
        storage=storage,
        heartbeat=(None, None),
        max_retries=0,
        study_name="s",
        direction="minimize",
        n_trials=1,
    )
    with pytest.raises(InvalidInput, match="was created to maximize; hydra.sweeper.direction=min"):
        Worker(sweeper, tmp_path)
