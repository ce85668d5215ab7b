"""Splits are stratified, seeded and nested; the test split stays apart; bad input is named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from src.data import TransferDataModule
from src.data.sources import digits, fashion_mnist, image_folder, textures, torchvision_dataset


def make(source=digits, **kwargs) -> TransferDataModule:
    return TransferDataModule(source, num_workers=0, **kwargs)


def class_counts(dm: TransferDataModule, split: str) -> np.ndarray:
    images = dm.source.test if split == "test" and dm.source.test is not None else dm.source.pool
    return np.bincount(images.targets[getattr(dm.splits, split)], minlength=dm.num_classes)


def test_splits_are_disjoint_stratified_and_cover_the_pool():
    dm = make(val_fraction=0.2)
    train, val, test = (set(getattr(dm.splits, s).tolist()) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == len(dm.source.pool)  # digits has no official test split
    proportions = class_counts(dm, "val") / class_counts(dm, "train")
    assert proportions.min() > 0.2 and proportions.max() < 0.3


def test_split_is_seeded():
    first, again, other = make(seed=1), make(seed=1), make(seed=2)
    assert np.array_equal(first.splits.train, again.splits.train)
    assert not np.array_equal(first.splits.train, other.splits.train)
    assert np.array_equal(first.splits.test, other.splits.test)  # test never depends on the seed


def test_samples_per_class_and_fraction_are_exact_and_nested():
    per_class = make(samples_per_class=20, val_fraction=0.25)
    assert (class_counts(per_class, "train") == 15).all()
    assert (class_counts(per_class, "val") == 5).all()
    small, large = make(fraction=0.1, seed=3), make(fraction=0.5, seed=3)
    pool_small = set(small.splits.train) | set(small.splits.val)
    pool_large = set(large.splits.train) | set(large.splits.val)
    assert pool_small < pool_large
    assert abs(len(pool_small) / len(pool_large) - 0.2) < 0.03


def test_official_test_split_is_kept_apart():
    dm = make(fashion_mnist, samples_per_class=30)
    assert len(dm.splits.test) == 10_000
    assert len(dm.splits.train) + len(dm.splits.val) == 300


def test_test_samples_per_class_caps_the_test_split_the_same_for_every_seed():
    capped = [
        make(fashion_mnist, samples_per_class=30, test_samples_per_class=25, seed=s) for s in (0, 1)
    ]
    assert (class_counts(capped[0], "test") == 25).all()
    assert np.array_equal(capped[0].splits.test, capped[1].splits.test)
    assert not np.array_equal(capped[0].splits.train, capped[1].splits.train)
    carved = make(test_samples_per_class=5)  # digits: a carved test split, capped the same way
    assert (class_counts(carved, "test") == 5).all()
    assert set(carved.splits.test) <= set(make().splits.test)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, r"dataset.fraction=0.0 is outside the valid range \(0.0, 1.0\]"),
        ({"fraction": 1.5}, "dataset.fraction=1.5"),
        ({"val_fraction": 1.0}, "dataset.val_fraction"),
        ({"samples_per_class": 1}, "dataset.samples_per_class=1"),
        ({"test_samples_per_class": 0}, "dataset.test_samples_per_class=0"),
    ],
)
def test_invalid_values_are_refused_with_key_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_samples_per_class_above_smallest_class_is_refused():
    with pytest.raises(ValueError, match=r"samples_per_class=500 .* valid range \[2, \d+\]"):
        make(samples_per_class=500).splits  # noqa: B018


def test_grey_images_become_rgb():
    image, label = digits().pool[0]
    assert image.mode == "RGB" and isinstance(label, int)
    assert textures().pool[0][0].mode == "RGB"


def _write_folder(root, classes, per_class=4, size=12):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_reads_classes_and_optional_test_root(tmp_path):
    _write_folder(tmp_path / "train", ["healthy", "rust"], per_class=6)
    _write_folder(tmp_path / "test", ["healthy", "rust"], per_class=2)
    source = image_folder(str(tmp_path / "train"), str(tmp_path / "test"))
    assert (
        source.classes == ["healthy", "rust"] and len(source.pool) == 12 and len(source.test) == 4
    )
    assert source.pool[0][0].mode == "RGB"


def test_image_folder_names_missing_path_and_empty_class(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_folder(str(tmp_path / "nowhere"))
    _write_folder(tmp_path / "data", ["a"])
    (tmp_path / "data" / "b").mkdir()
    with pytest.raises(ValueError, match=r"empty class folder\(s\) \['b'\]"):
        image_folder(str(tmp_path / "data"))


def test_torchvision_set_that_cannot_download_names_offline_sets(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", no_network)
    with pytest.raises(RuntimeError, match="Offline data sets: fashion_mnist"):
        torchvision_dataset("cifar10", root=str(tmp_path))
