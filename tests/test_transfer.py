"""Real transfer, offline: ImageNet features beat random ones on real images, same budget and seed."""

from __future__ import annotations

import pytest

from tests.helpers.compose import compose_train, train

pytestmark = pytest.mark.slow  # two real training runs

PROBE = [
    "dataset=fashion_mnist",
    "dataset.samples_per_class=100",
    "strategy=linear_probe",
    "regularisation=none",
    "optimizer.lr=0.01",
    "trainer.max_epochs=3",
    "trainer.limit_test_batches=32",  # 2,048 official test images
    "trainer.enable_progress_bar=false",
    "logger=none",
    "seed=0",
]


def test_pretrained_linear_probe_beats_random_init_by_5_points(tmp_path):
    pretrained = train(compose_train(tmp_path / "pretrained", PROBE))["test/acc"]
    random_init = train(compose_train(tmp_path / "random", [*PROBE, "backbone.pretrained=false"]))[
        "test/acc"
    ]
    print(f"linear probe test/acc: pretrained {pretrained:.3f}, random init {random_init:.3f}")
    assert pretrained >= random_init + 0.05, (pretrained, random_init)
