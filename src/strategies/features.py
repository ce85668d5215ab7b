"""Frozen backbone features, computed once per (backbone, weights, data, split, transform) and cached
on disk, plus the heads that train on them (scikit-learn classifiers or a torch linear layer)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import lightning.pytorch as L
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of timm's classifier (get_classifier), e.g. ("classifier.",)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return tuple(f"{name}." for name, module in model.named_modules() if name and module is head)


def weights_fingerprint(model: nn.Module, head: bool = False) -> str:
    """Hash of the body's tensors: pooled features do not depend on the classifier, so runs that
    differ only in their (new, randomly initialised) head share a cache. head=True: the classifier's."""
    prefixes = classifier_prefixes(model)
    digest = hashlib.sha1()
    for key, tensor in model.state_dict().items():
        if key.startswith(prefixes) != head:
            continue
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]


@torch.inference_mode()
def extract(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    logits: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Pooled pre-logits features (timm's forward_head(pre_logits=True)) and labels, backbone in
    eval mode; with logits=True also the model's own head outputs (e.g. its ImageNet logits)."""
    model.eval().to(device)
    features, labels, outputs = [], [], []
    for images, targets in batches:
        maps = model.forward_features(images.to(device))
        features.append(model.forward_head(maps, pre_logits=True).float().cpu())
        labels.append(targets)
        if logits:
            outputs.append(model.forward_head(maps).float().cpu())
    extracted = (torch.cat(features), torch.cat(labels))
    return (*extracted, torch.cat(outputs)) if logits else extracted


def cached_features(
    model: nn.Module,
    datamodule,
    cache_dir: str | Path,
    device: torch.device,
    splits: tuple[str, ...],
    logits: bool = False,
) -> tuple[dict, dict[str, float]]:
    """({split: (features, labels[, logits])}, stats); each split is computed at most once per
    identity. Logits are a second entry keyed by the head too, so features stay shared."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    body = weights_fingerprint(model)
    head = weights_fingerprint(model, head=True) if logits else None
    result, hits, seconds = {}, 0, 0.0
    for split in splits:
        identity = {
            "architecture": model.pretrained_cfg.get("architecture"),
            "weights": body,
            "data": datamodule.identity(split),
            "split": split,
            "transform": datamodule.eval_transform_repr,
        }
        paths = [cache_dir / f"{cache_key(identity)}.pt"]
        if logits:
            paths.append(cache_dir / f"{cache_key(dict(identity, head=head))}.pt")
        # One process extracts, the others (DDP ranks started by torchrun or srun, parallel sweep
        # workers) wait for it and read its file. A shared file system gives one lock per cluster.
        with FileLock(str(paths[0].with_suffix(".lock"))):
            result[split], elapsed = _load_or_extract(model, datamodule, split, device, paths)
            if elapsed is not None:  # the logits first: features present means both are
                if logits:
                    _save(paths[1], {"logits": result[split][2]}, dict(identity, head=head))
                features, labels = result[split][:2]
                _save(paths[0], {"features": features, "labels": labels}, identity)
        hits += elapsed is None
        seconds += elapsed or 0.0
        if elapsed is not None:
            log.info(
                "Features %s: %s in %.1fs -> %s",
                split,
                tuple(result[split][0].shape),
                elapsed,
                paths[0],
            )
    log.info("Feature cache: %d of %d splits reused from %s", hits, len(splits), cache_dir)
    return result, {"feature_cache/hits": hits, "feature_cache/extract_seconds": seconds}


def _load_or_extract(model, datamodule, split: str, device, paths: list[Path]):
    """(tensors, seconds spent extracting; None when read from the cache)."""
    if all(path.is_file() for path in paths):
        stored = [torch.load(path, map_location="cpu", weights_only=True) for path in paths]
        tensors = (stored[0]["features"], stored[0]["labels"])
        return tensors + ((stored[1]["logits"],) if len(paths) > 1 else ()), None
    start = time.perf_counter()
    tensors = extract(model, datamodule.eval_batches(split, device), device, len(paths) > 1)
    return tensors, time.perf_counter() - start


def _save(path: Path, tensors: dict, identity: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({**tensors, "identity": json.dumps(identity)}, tmp)
    os.replace(tmp, path)  # atomic: a parallel run never reads half a file


class FeatureDataModule(L.LightningDataModule):
    """Cached (features, labels) per split, served as tensors."""

    def __init__(self, features: dict, batch_size: int, seed: int, balanced: bool = False):
        super().__init__()
        self.features, self.batch_size, self.seed = features, batch_size, seed
        self.balanced = balanced  # the data set's sampler=balanced, for the linear head

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        from src.data.sampling import BalancedSampler

        dataset = TensorDataset(*self.features[split])
        if shuffle and self.balanced:
            sampler = BalancedSampler(self.features[split][1].numpy(), self.seed)
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class LinearHead(nn.Module):
    """A linear classifier on cached features (timm's get_classifier contract, for the groups)."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


def sklearn_classifier(
    kind: str, C: float, max_iter: int, seed: int, balanced: bool = False, task=None
):
    """Standardised features into logistic regression, a linear SVM or an RBF SVM; for a
    multi-label task one per label (one-vs-rest on the 0/1 label matrix). balanced: weigh classes
    by inverse frequency (class_weight="balanced", per label for multi-label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    weight = "balanced" if balanced else None
    classifiers = {
        "logistic": lambda: LogisticRegression(
            C=C, max_iter=max_iter, random_state=seed, class_weight=weight
        ),
        "linear_svm": lambda: LinearSVC(
            C=C, max_iter=max_iter, random_state=seed, class_weight=weight
        ),
        "svm": lambda: SVC(C=C, kernel="rbf", random_state=seed, class_weight=weight),
    }
    classifier = classifiers[kind]()
    if getattr(task, "multilabel", False):
        classifier = OneVsRestClassifier(classifier)
    return make_pipeline(StandardScaler(), classifier)
