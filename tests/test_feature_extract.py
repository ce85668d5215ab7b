"""feature_extract: the backbone runs once per split, a second run reuses the cache, every
classifier logs a test accuracy through the same metrics as any run."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.compose import compose_train, train

pytestmark = pytest.mark.slow  # real training runs


def feature_run(tmp_path, cache, *overrides):
    base = [
        "dataset=digits",
        "strategy=feature_extract",
        f"strategy.cache_dir={cache}",
        "backbone.input_size=[3,32,32]",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
    ]
    return train(compose_train(tmp_path, [*base, *overrides]))


def cache_hits(tmp_path) -> list[float]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["start_time ASC"]
    )
    metrics = [run.data.metrics for run in runs]
    return [m["feature_cache/hits/train_val"] + m["feature_cache/hits/test"] for m in metrics]


def test_second_run_reuses_the_cache_and_gets_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    first = feature_run(tmp_path, cache, "strategy.classifier=linear_svm")
    second = feature_run(tmp_path, cache, "strategy.classifier=linear_svm")
    assert len(list(cache.glob("*.pt"))) == 3  # train, val, test
    assert cache_hits(tmp_path) == [0, 3]
    assert first["test/acc"] == second["test/acc"] > 0.5


def test_other_data_or_weights_miss_the_cache(tmp_path):
    cache = tmp_path / "cache"
    feature_run(tmp_path, cache, "strategy.classifier=logistic")
    feature_run(tmp_path, cache, "strategy.classifier=logistic", "dataset.fraction=0.5")
    feature_run(tmp_path, cache, "strategy.classifier=logistic", "backbone.pretrained=false")
    assert cache_hits(tmp_path) == [0, 1, 0]  # the fraction changes train/val, not the test split
    assert len(list(cache.glob("*.pt"))) == 3 + 2 + 3


@pytest.mark.parametrize("classifier", ["logistic", "svm", "linear"])
def test_every_classifier_logs_test_metrics(tmp_path, classifier):
    metrics = feature_run(tmp_path, tmp_path / "cache", f"strategy.classifier={classifier}")
    assert 0.3 < metrics["test/acc"] <= 1.0 and "test/f1_macro" in metrics
