"""From built objects (a backbone with its source head, data modules) to scores, through the
shared feature cache of src/pipelines/features.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from src.similarity.domain import domain_scores
from src.similarity.feature_estimators import nleep, parc, sfda
from src.similarity.transferability import (
    hscore,
    knn_accuracy,
    leep,
    linear_accuracy,
    logme,
    nce,
)

log = logging.getLogger(__name__)

# Each estimator from (train features, labels, source posteriors, (val features, labels), k, seed).
ESTIMATORS = {
    "logme": lambda f, y, probs, val, k, seed: logme(f, y),
    "leep": lambda f, y, probs, val, k, seed: leep(probs, y),
    "nce": lambda f, y, probs, val, k, seed: nce(probs.argmax(1), y, num_source=probs.shape[1]),
    "hscore": lambda f, y, probs, val, k, seed: hscore(f, y),
    "knn_acc": lambda f, y, probs, val, k, seed: knn_accuracy((f, y), val, k),
    "linear_acc": lambda f, y, probs, val, k, seed: linear_accuracy((f, y), val, seed),
    "nleep": lambda f, y, probs, val, k, seed: nleep(f, y, seed=seed),
    "parc": lambda f, y, probs, val, k, seed: parc(f, y),
    "sfda": lambda f, y, probs, val, k, seed: sfda(f, y),
}


def check_estimators(names) -> list[str]:
    """The selected estimators, refused before any work when one is unknown or none is given."""
    names = list(names)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise ValueError(
            f"estimators={names}: {'unknown ' + str(unknown) if unknown else 'empty'}; "
            f"choose from {list(ESTIMATORS)}."
        )
    return names


def cap_per_class(datamodule, max_per_class: int | None) -> None:
    """Subsample: at most max_per_class labelled images per class (fewer where a class has fewer),
    unless the data set config already fixes samples_per_class. Before setup(), which splits."""
    if max_per_class is not None and max_per_class < 2:
        raise ValueError(f"max_per_class={max_per_class}: must be >= 2 (or null: all images).")
    if max_per_class is None or datamodule.samples_per_class is not None:
        return
    from src.data import TEST_SPLIT_SEED
    from src.data.splits import carve_test

    if datamodule.source.multilabel:  # LEEP, LogME & co. score one class per image
        raise ValueError(
            "Transferability and domain similarity need a single-label data set; this one is "
            "multi-label."
        )
    targets = datamodule.source.pool.targets
    pool = np.arange(len(targets))
    if datamodule.source.test is None:  # the pool loses a test split first, as in setup()
        pool, _ = carve_test(targets, datamodule.test_fraction, TEST_SPLIT_SEED)
    smallest = int(np.bincount(targets[pool]).min())
    datamodule.samples_per_class = max(2, min(max_per_class, smallest))  # split_pool needs 2
    log.info("Subsample: %d labelled images per class", datamodule.samples_per_class)


def load_subsampled(datamodule, transform, max_per_class: int | None) -> None:
    """The data set loaded and split, at most max_per_class images a class, in the backbone's
    evaluation preprocessing: what every estimator scores."""
    cap_per_class(datamodule, max_per_class)
    datamodule.set_transforms(transform, transform)
    datamodule.prepare_data()
    datamodule.setup()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def transferability(
    model, datamodule, cache_dir: str | Path, knn_k: int, seed: int, estimators=tuple(ESTIMATORS)
) -> dict[str, float]:
    """The selected estimators on the train split (kNN and logistic-regression accuracy: trained
    there and scored on the val split), each with its own time in seconds."""
    from src.pipelines.features import cached_features

    start = time.perf_counter()
    splits, _ = cached_features(model, datamodule, cache_dir, device(), ("train", "val"), True)
    (features, labels, logits), (val_features, val_labels, _) = splits["train"], splits["val"]
    f, y = features.numpy(), labels.numpy()
    probs = torch.softmax(logits.double(), dim=1).numpy()
    val = (val_features.numpy(), val_labels.numpy())
    scores = {}
    for name in check_estimators(estimators):
        began = time.perf_counter()
        scores[name] = float(ESTIMATORS[name](f, y, probs, val, knn_k, seed))
        scores[f"seconds_{name}"] = time.perf_counter() - began
    scores.update(num_images=float(len(y)), seconds=time.perf_counter() - start)
    log.info("Transferability: %s", {k: round(v, 4) for k, v in scores.items()})
    return scores


def half_sample(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of half of each class's images (rounded up), drawn without replacement."""
    picked = [
        rng.choice(where, (len(where) + 1) // 2, replace=False)
        for where in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(picked))


def score_resamples(
    model, datamodule, cache_dir, knn_k: int, seed: int, estimators, resamples: int
) -> list[dict[str, float]]:
    """The estimators again on `resamples` half-samples of the scored training images (the
    validation images of kNN / linear accuracy stay), for intervals on a score's rank correlation
    (src/report/intervals.py). Half of each class, drawn without replacement: a bootstrap draw
    with replacement repeats images, and LogME's evidence reads repeats as less noise (measured
    on the backbone-choice study: its resampled tau interval, [-0.46, 0.23], missed its own
    estimate, 0.42); a stratified half-sample has no repeats, keeps the class balance, and its
    spread matches the full sample's (the finite-population factor 1 - m/n halves a half-sample's
    variance back). Resample b draws the same positions for every backbone (seeded by `seed`
    and b), so the backbones stay paired on one data set."""
    from src.pipelines.features import cached_features

    splits, _ = cached_features(model, datamodule, cache_dir, device(), ("train", "val"), True)
    (features, labels, logits), (val_features, val_labels, _) = splits["train"], splits["val"]
    f, y = features.numpy(), labels.numpy()
    probs = torch.softmax(logits.double(), dim=1).numpy()
    val = (val_features.numpy(), val_labels.numpy())
    rows = []
    for b in range(resamples):
        drawn = half_sample(y, np.random.default_rng([seed, b]))
        fb, yb, pb = f[drawn], y[drawn], probs[drawn]
        row = {"resample": float(b)}
        for name in check_estimators(estimators):
            try:
                row[name] = float(ESTIMATORS[name](fb, yb, pb, val, knn_k, seed))
            except (np.linalg.LinAlgError, ValueError) as error:
                # One resample's numerical failure (measured once: NLEEP's PCA SVD not
                # converging) must not cost the job its scores: NaN, and the report leaves that
                # resample out of the score's interval (experiments/study_results.rescorer).
                log.warning("Resample %d: %s failed (%s): NaN", b, name, error)
                row[name] = float("nan")
        rows.append(row)
    log.info("Scores on %d half-samples of %d training images", resamples, len(y))
    return rows


def domain(model, target, source, cache_dir: str | Path, seed: int) -> dict[str, float]:
    """Cui et al.'s EMD similarity, Frechet distance and MMD between the two train splits."""
    from src.pipelines.features import cached_features

    sets = [
        cached_features(model, dm, cache_dir, device(), ("train",))[0]["train"]
        for dm in (source, target)
    ]
    (fs, ys), (ft, yt) = ((f.numpy(), y.numpy()) for f, y in sets)
    scores = domain_scores((fs, ys), (ft, yt), seed)
    log.info("Domain similarity: %s", {k: round(v, 4) for k, v in scores.items()})
    return scores
