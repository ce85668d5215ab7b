"""feature_extract: the backbone runs once per split, a second run reuses the cache, every
classifier logs a test accuracy through the same metrics as any run."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.compose import compose_train, train
from tests.helpers.jobs import WHOLE_SPLITS, tiny

pytestmark = pytest.mark.slow  # real training runs


def feature_run(tmp_path, cache, *overrides):
    # The tiny job on whole splits (the default for feature_extract: features of every image).
    job = tiny(
        "strategy=feature_extract", f"strategy.cache_dir={cache}", *overrides, without=WHOLE_SPLITS
    )
    return train(compose_train(tmp_path, job))


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


def test_a_list_of_C_is_chosen_on_validation():
    # Kornblith et al.'s protocol: every C fitted on train, the best on val kept, test untouched.
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from src.pipelines.fixed_features import FixedFeaturePipeline
    from src.strategies import FeatureExtract

    rng = np.random.default_rng(0)

    def split(n):  # 2 informative dimensions among 50 noisy ones: C matters
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 50))
        x[:, :2] += np.eye(3)[y][:, :2] * 1.5
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    features = {"train": split(60), "val": split(300)}
    grid = [10.0, 1e-4, 0.01, 1.0]  # unsorted on purpose
    pipeline = FixedFeaturePipeline(FeatureExtract(C=grid))
    fitted, chosen = pipeline._fit_sklearn(features, 0, False, None)
    x, y = (t.numpy() for t in features["train"])
    xv, yv = (t.numpy() for t in features["val"])
    val = {
        C: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=0))
        .fit(x, y)
        .score(xv, yv)
        for C in sorted(grid)
    }
    assert len(set(val.values())) > 1  # the choice is not a tie
    assert chosen == max(val, key=val.get)  # the first best in ascending C
    assert fitted.score(xv, yv) == val[chosen]


@pytest.mark.parametrize("C", ["[]", "[0.1,-1]", "0", "[abc]"])
def test_a_bad_C_is_refused(tmp_path, C):
    with pytest.raises(ValueError, match="strategy.C"):
        feature_run(tmp_path, tmp_path / "cache", f"strategy.C={C}")


def test_cache_keys_see_settings_without_weights():
    """global_pool=max and avg share every weight but not their features: different cache keys.
    A classifier's size or idle dropout / drop-path (eval mode) do not change the features."""
    import timm

    from src.caching import structure_fingerprint

    def key(**kwargs):
        model = timm.create_model("resnet10t", **{"num_classes": 3, **kwargs})
        return structure_fingerprint(model, leave_out=model.get_classifier())

    assert key(global_pool="max") != key()
    assert key(num_classes=7) == key() == key(drop_rate=0.5, drop_path_rate=0.1)
