"""Class imbalance on real offline data: a long-tailed copy of digits, inverse-frequency loss
weights, the class-balanced sampler, and the metrics that see the tail (balanced accuracy, AUROC,
per class) in the MLflow run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.imbalance import long_tailed
from src.data.sampling import BalancedSampler, inverse_frequency
from src.data.sources import digits
from src.errors import InvalidInput
from tests.helpers.compose import compose_train, only_run, train
from tests.helpers.jobs import WHOLE_SPLITS, tiny


def test_long_tailed_digits_thin_each_class_geometrically():
    source = long_tailed(digits, imbalance_ratio=10, seed=0)
    counts = np.bincount(source.pool.targets)
    full = np.bincount(digits().pool.targets)
    expected = [min(full[c], round(full.max() * 10 ** (-c / 9))) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] / counts[9] == pytest.approx(10, rel=0.1)


def test_inverse_frequency_weights_balance_the_classes():
    targets = np.array([0] * 8 + [1] * 2)
    weights = inverse_frequency(targets, 3)  # class 2 absent: weight 1, not infinity
    assert weights.tolist() == pytest.approx([10 / (3 * 8), 10 / (3 * 2), 1.0])
    multi = np.array([[1, 0], [1, 0], [0, 0], [1, 1]])
    assert inverse_frequency(multi, 2).tolist() == pytest.approx([1 / 3, 3.0])  # n_neg / n_pos


def test_balanced_sampler_draws_classes_evenly_and_repeats_per_epoch():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = BalancedSampler(labels, seed=1)
    first = list(sampler)
    assert len(first) == 1000 and 0.4 < labels[first].mean() < 0.6
    assert list(sampler) == first  # same (seed, epoch): same draw, as after a resume
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_class_weights_reach_the_loss(tmp_path):
    from src.config import build_data

    cfg = compose_train(tmp_path, ["dataset=digits_lt", "dataset.class_weights=auto"])
    datamodule, _, _ = build_data(cfg)
    weights = datamodule.loss_weights
    counts = np.bincount(datamodule.train_targets(), minlength=10)
    assert torch.allclose(weights, torch.tensor(counts.sum() / (10 * counts), dtype=torch.float32))
    assert weights[9] > 5 * weights[0]  # the tail weighs more


LONG_TAILED = tiny(
    "dataset=digits_lt",
    "strategy=linear_probe",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "dataset.batch_size=32",
    "optimizer.lr=0.01",
    "monitor.metric=val/balanced_acc",
    without=WHOLE_SPLITS,  # val and test whole: every class is scored
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "balance",
    [[], ["dataset.class_weights=auto"], ["dataset.sampler=balanced"]],
    ids=["plain", "class_weights", "sampler"],
)
def test_imbalanced_run_logs_balanced_accuracy_and_per_class_metrics(tmp_path, balance):
    cfg = compose_train(tmp_path, [*LONG_TAILED, *balance])
    metrics = train(cfg)
    logged = only_run(cfg).data.metrics
    for key in ("test/balanced_acc", "test/auroc", "val/balanced_acc", "test/acc_class/9"):
        assert key in logged and 0 <= logged[key] <= 1
    assert {"test/f1_class/9", "test/auroc_class/0"} <= set(logged)
    assert metrics["test/balanced_acc"] == pytest.approx(
        np.mean([logged[f"test/acc_class/{c}"] for c in range(10)]), abs=1e-5
    )


def test_sampler_name_is_checked(tmp_path):
    cfg = compose_train(tmp_path, [*LONG_TAILED, "dataset.sampler=oversample"])
    with pytest.raises(InvalidInput, match="dataset.sampler='oversample'"):
        train(cfg)
