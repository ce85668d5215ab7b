"""lr_find=true|use: the range test's suggestion and plot are in the MLflow run; with `use` the
optimizer trains at it (the head at the suggestion, the backbone at the strategy's share of it)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from src.errors import InvalidInput
from src.models.lr_finder import lr_finder
from tests.helpers.compose import compose_train, train
from tests.helpers.jobs import tiny


def test_lr_find_takes_false_true_or_use_only():
    assert lr_finder(False) is None
    assert lr_finder(True).use is False and lr_finder("use").use is True
    for bad in ("maybe", 1, 0):
        with pytest.raises(ValueError, match=r"lr_find=.*choose false, true .* or use"):
            lr_finder(bad)


def test_a_bad_lr_find_is_refused_before_the_run(tmp_path):
    with pytest.raises(InvalidInput, match="lr_find='maybe'"):
        train(compose_train(tmp_path, [*tiny(), "lr_find=maybe"]))
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_the_suggestion_is_logged_and_used(tmp_path):
    overrides = tiny(  # 16 range-test steps of 16 images, from 1e-4: enough points to suggest
        "lr_find=use",
        "callbacks.lr_finder.num_training_steps=16",
        "callbacks.lr_finder.min_lr=1e-4",
        "+callbacks.lr_finder.early_stop_threshold=null",
        "dataset.batch_size=16",
        "dataset.num_workers=0",
        "scheduler.warmup_fraction=0",  # step 0 runs at the full lr
        "trainer.max_epochs=1",
        "test=false",
        "logger.mlflow.log_model=false",
    )
    train(compose_train(tmp_path, overrides))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    suggestion = float(run.data.params["lr_find/suggestion"])
    assert 1e-6 < suggestion < 1.0
    assert run.data.params["lr_find/used"] == "True"
    assert "lr_find.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    head_lr = client.get_metric_history(run.info.run_id, "lr/head")[0].value
    stem_lr = client.get_metric_history(run.info.run_id, "lr/stem")[0].value
    assert suggestion != pytest.approx(1e-3)  # not conf/optimizer/adamw.yaml's lr by chance
    assert head_lr == pytest.approx(suggestion, rel=1e-6)
    assert stem_lr == pytest.approx(0.1 * suggestion, rel=1e-6)  # finetune's backbone_lr_mult
