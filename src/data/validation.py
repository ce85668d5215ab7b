"""A DataModule's settings checked before anything is loaded: each error names the key and what
is valid."""

from __future__ import annotations

from src.data.sampling import CLASS_WEIGHTS, SAMPLERS


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
