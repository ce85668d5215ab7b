"""Credentials in the config never reach MLflow's params; the rest of the config does."""

from __future__ import annotations

import pytest

from tests.helpers.compose import compose_train, only_run, train


@pytest.mark.slow
def test_secret_keys_are_not_logged(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_TEST_TOKEN", "hunter2")
    cfg = compose_train(
        tmp_path,
        [
            *tiny_overrides,
            "+api_token=${oc.env:TRANSFERLAB_TEST_TOKEN}",
            "+store.password=hunter2",
            "+store.host=db.example",
            "test=false",
        ],
    )
    train(cfg)
    run = only_run(cfg)
    params = run.data.params
    assert "hunter2" not in params.values()
    assert not any("token" in k or "password" in k for k in params)
    assert params["store/host"] == "db.example" and params["optimizer/lr"] == "0.001"


def test_a_password_inside_a_url_is_masked():
    from src.tracking.secrets import redact

    config = {"storage": "postgresql://bob:s3cr3t@db:5432/optuna", "uri": "sqlite:////tmp/a.db"}
    assert redact(config) == {
        "storage": "postgresql://bob:***@db:5432/optuna",
        "uri": "sqlite:////tmp/a.db",
    }
