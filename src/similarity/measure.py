"""From built objects (a backbone with its source head, data modules) to scores, through the
shared feature cache of src/pipelines/features.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from src.similarity.domain import domain_scores
from src.similarity.transferability import hscore, leep, logme, nce, probe_accuracy

log = logging.getLogger(__name__)


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


def prepare(datamodule, transform, max_per_class: int | None) -> None:
    cap_per_class(datamodule, max_per_class)
    datamodule.set_transforms(transform, transform)
    datamodule.prepare_data()
    datamodule.setup()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def transferability(
    model, datamodule, cache_dir: str | Path, knn_k: int, seed: int
) -> dict[str, float]:
    """LogME, H-score, LEEP and NCE on the train split; kNN and logistic-regression accuracy
    trained there and scored on the val split."""
    from src.pipelines.features import cached_features

    start = time.perf_counter()
    splits, _ = cached_features(model, datamodule, cache_dir, device(), ("train", "val"), True)
    (features, labels, logits), (val_features, val_labels, _) = splits["train"], splits["val"]
    f, y = features.numpy(), labels.numpy()
    probs = torch.softmax(logits.double(), dim=1).numpy()
    scores = {
        "logme": logme(f, y),
        "hscore": hscore(f, y),
        "leep": leep(probs, y),
        "nce": nce(probs.argmax(axis=1), y, num_source=probs.shape[1]),
        **probe_accuracy((f, y), (val_features.numpy(), val_labels.numpy()), knn_k, seed),
        "num_images": float(len(y)),
        "seconds": time.perf_counter() - start,
    }
    log.info("Transferability: %s", {k: round(v, 4) for k, v in scores.items()})
    return scores


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
