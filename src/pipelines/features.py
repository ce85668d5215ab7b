"""Fixed features: frozen backbone features, computed once per (backbone, weights, data, split,
transform) and cached on disk (src/caching), and the heads that train on them (scikit-learn
classifiers or a torch linear layer). The pipeline that runs them for strategy=feature_extract is
src/pipelines/fixed_features.py; src.similarity and src.bench use the features directly."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.caching import TensorCache, inference_setup, state_fingerprint, structure_fingerprint
from src.progress import progress
from src.strategies.heads import classifier_prefixes

log = logging.getLogger(__name__)


def weights_fingerprint(model: nn.Module, head: bool = False) -> str:
    """Hash of the body's tensors: pooled features do not depend on the classifier, so runs that
    differ only in their (new, randomly initialised) head share a cache. head=True: the classifier's."""
    prefixes = classifier_prefixes(model)
    return state_fingerprint(
        (key, tensor)
        for key, tensor in model.state_dict().items()
        if key.startswith(prefixes) == head
    )


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


@torch.inference_mode()
def extract(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    logits: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Pooled pre-logits features (timm's forward_head(pre_logits=True)) and labels, backbone in
    eval mode; with logits=True also the model's own head outputs (e.g. its ImageNet logits).
    Outputs stay on the device until the end: one copy back, no sync per batch."""
    model.eval().to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    features, labels, outputs = [], [], []
    for images, targets in batches:
        maps = model.forward_features(images.to(device).contiguous(memory_format=memory_format))
        features.append(model.forward_head(maps, pre_logits=True).float())
        labels.append(targets)
        if logits:
            outputs.append(model.forward_head(maps).float())
    extracted = (torch.cat(features).cpu(), torch.cat(labels))
    return (*extracted, torch.cat(outputs).cpu()) if logits else extracted


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
    store = TensorCache(cache_dir)
    body = weights_fingerprint(model)
    head = weights_fingerprint(model, head=True) if logits else None
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None  # timm's
    structure = structure_fingerprint(model, leave_out=classifier)
    result, hits, seconds = {}, 0, 0.0
    for split in splits:
        identity = {
            "architecture": model.pretrained_cfg.get("architecture"),
            "weights": body,
            "structure": structure,
            "data": datamodule.identity(split),
            "split": split,
            "transform": datamodule.eval_transform_repr,
        }
        identities = [identity, dict(identity, head=head)] if logits else [identity]
        # One process extracts, the others wait for it and read its file (TensorCache.locked).
        with store.locked(identity):
            result[split], elapsed = _load_or_extract(
                model, datamodule, split, device, store, identities
            )
            if elapsed is not None:  # the logits first: features present means both are
                if logits:
                    store.save(identities[1], {"logits": result[split][2]})
                features, labels = result[split][:2]
                store.save(identity, {"features": features, "labels": labels})
        hits += elapsed is None
        seconds += elapsed or 0.0
        if elapsed is not None:
            shape = tuple(result[split][0].shape)
            log.info("Features %s: %s in %.1fs -> %s", split, shape, elapsed, store.path(identity))
    log.info("Feature cache: %d of %d splits reused from %s", hits, len(splits), store.folder)
    return result, {"feature_cache/hits": hits, "feature_cache/extract_seconds": seconds}


def _load_or_extract(model, datamodule, split: str, device, store, identities: list[dict]):
    """(tensors, seconds spent extracting; None when read from the cache)."""
    stored = [store.load(identity) for identity in identities]
    if all(entry is not None for entry in stored):
        tensors = (stored[0]["features"], stored[0]["labels"])
        return tensors + ((stored[1]["logits"],) if len(stored) > 1 else ()), None
    start = time.perf_counter()
    batch, channels_last = inference_setup(datamodule, device)
    batches = progress(
        datamodule.eval_batches(split, device, batch),
        desc=f"Features ({split})",
        unit="batch",
        total=len(datamodule.eval_loader(split, batch)),
    )
    tensors = extract(model, batches, device, len(identities) > 1, channels_last)
    return tensors, time.perf_counter() - start


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
