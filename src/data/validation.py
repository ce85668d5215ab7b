"""A DataModule's settings checked before anything is loaded, and its splits once made (every
class in every split, single-label data): each error names the key and what is valid."""

from __future__ import annotations

import logging

import numpy as np

from src.data.sampling import CLASS_WEIGHTS, SAMPLERS

log = logging.getLogger(__name__)


def check_settings(
    *,
    batch_size: int,
    num_workers: int | str,
    fraction: float,
    samples_per_class: int | None,
    val_fraction: float,
    test_fraction: float,
    test_samples_per_class: int | None,
    transforms_on_device: bool | str,
    class_weights: str | None,
    sampler: str,
) -> None:
    if class_weights not in CLASS_WEIGHTS:
        raise ValueError(f"dataset.class_weights={class_weights!r}: choose null or auto.")
    if sampler not in SAMPLERS:
        raise ValueError(f"dataset.sampler={sampler!r}: choose one of {list(SAMPLERS)}.")
    check_range("dataset.fraction", fraction, 0.0, 1.0, low_open=True)
    check_range("dataset.val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
    check_range("dataset.test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    if samples_per_class is not None and samples_per_class < 2:
        raise ValueError(f"dataset.samples_per_class={samples_per_class}: must be >= 2 (or null).")
    if test_samples_per_class is not None and test_samples_per_class < 1:
        raise ValueError(
            f"dataset.test_samples_per_class={test_samples_per_class}: must be >= 1 (or null)."
        )
    if batch_size < 1:
        raise ValueError(f"dataset.batch_size={batch_size}: must be >= 1.")
    if num_workers != "auto" and not (isinstance(num_workers, int) and num_workers >= 0):
        raise ValueError(f"dataset.num_workers={num_workers!r}: an integer >= 0, or auto.")
    if transforms_on_device not in (True, False, "auto"):
        raise ValueError(
            f"dataset.transforms_on_device={transforms_on_device!r}: choose auto, true or false."
        )


def check_range(
    key: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{key}={value} is outside the valid range {interval}.")


# ---- every class in every split ------------------------------------------------------------
# A class too small for its train/val/test share is refused (it would silently never be trained
# on, or never be scored) or warned about, by name, with the settings that would work.


def check_pool(
    classes: list[str], pool_targets: np.ndarray, samples_per_class: int | None, carved_test: bool
) -> None:
    """Before splitting: each class needs 2 labelled images (one train, one val) after the test
    split, and samples_per_class at most the smallest class."""
    counts = np.bincount(pool_targets, minlength=len(classes))
    small = [f"'{classes[c]}' ({counts[c]})" for c in np.flatnonzero(counts < 2)]
    if small:
        need = "3 images (one each for train, val and test)" if carved_test else "2 images"
        raise ValueError(
            f"class(es) {', '.join(small)} have fewer than 2 images left for train and val"
            f"{' after the test split' if carved_test else ''}: each class needs at least {need}. "
            "Add images, or remove the class."
        )
    smallest = int(counts.min())
    if samples_per_class is not None and samples_per_class > smallest:
        names = [classes[c] for c in np.flatnonzero(counts == smallest)]
        raise ValueError(
            f"dataset.samples_per_class={samples_per_class} is more than class(es) {names} have "
            f"({smallest} for train and val); valid range [2, {smallest}]."
        )


def check_splits(
    classes: list[str],
    counts: dict[str, np.ndarray],
    val_fraction: float | None,
    test_fraction: float | None,
    samples_per_class: int | None,
) -> None:
    """After splitting (counts per class of train, val, test): refuse a class with no training
    image; warn when a class's val or test share (None: an official split) is far from the one
    asked for, as rounding on a small class makes it."""
    labelled = counts["train"] + counts["val"]
    empty = np.flatnonzero(counts["train"] == 0)
    if len(empty):
        parts = [
            f"'{classes[c]}' (train 0, val {counts['val'][c]}, test {counts['test'][c]})"
            for c in empty
        ]
        m = max(2, int(labelled[empty].min()))
        fixes = [] if val_fraction is None else [f"dataset.val_fraction below {(m - 0.5) / m:.2f}"]
        if samples_per_class is not None and val_fraction is not None:
            fixes.append(f"dataset.samples_per_class >= {_enough(val_fraction)}")
        raise ValueError(
            f"class(es) {', '.join(parts)} would get no training image. What would work: "
            f"{' or '.join([*fixes, 'more images in those classes'])}."
        )
    shares = {} if val_fraction is None else {"val": (counts["val"], labelled, val_fraction)}
    if test_fraction is not None:
        shares["test"] = (counts["test"], labelled + counts["test"], test_fraction)
    for split, (part, whole, wanted) in shares.items():
        share = part / np.maximum(whole, 1)
        skewed = np.flatnonzero((share > 2 * wanted) | (share < wanted / 2))
        if len(skewed):
            log.warning(
                "Class(es) %s are too small for a %s share of %.2f; they get %s. More images "
                "(or a larger dataset.samples_per_class) even this out.",
                [classes[c] for c in skewed[:10]],
                split,
                wanted,
                [f"{part[c]} of {whole[c]}" for c in skewed[:10]],
            )


def _enough(val_fraction: float) -> int:
    """The smallest per-class count whose val share leaves at least one training image."""
    s = 2
    while s - max(1, round(val_fraction * s)) < 1:
        s += 1
    return s
