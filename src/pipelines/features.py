"""The fixed-feature pipeline of strategy=feature_extract (src/strategies/features.py): frozen
backbone features, computed once per (backbone, weights, data, split, transform) and cached on disk
(src/caching), the heads that train on them (scikit-learn classifiers or a torch linear layer), and
the shipped model: its checkpoints rewritten to hold the backbone with that head."""

from __future__ import annotations

import copy
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
from src.strategies.base import Strategy
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
        datamodule.eval_batches(split, device, batch), desc=f"Features ({split})", unit="batch",
        total=len(datamodule.eval_loader(split, batch)),
    )  # fmt: skip
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


class FixedFeaturePipeline:
    """strategy=feature_extract's run: the backbone runs once per split, its pooled features are
    cached on disk (cached_features, above), the strategy's classifier trains on them, and the
    run's checkpoints become the whole model (the backbone with that head)."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.head_module: L.LightningModule | None = None
        self.features: FeatureDataModule | None = None

    def plan(self, model, regularisation, datamodule, max_epochs: int) -> None:
        """Nothing to plan: the whole backbone is cached already (its features)."""

    def fit(self, trainer, module, datamodule, ckpt_path: str | None = None) -> None:
        # Cached features make a rerun cheap: a resumed job extracts (reads) them again, and the
        # linear head continues from its checkpoint (a scikit-learn head is simply refitted).
        from src.strategies.heads import is_probabilistic

        features, stats = self._features(trainer, module, datamodule, ("train", "val"))
        balanced = datamodule.sampler == "balanced"
        self.features = FeatureDataModule(
            features, datamodule.batch_size, datamodule.seed, balanced=balanced
        )
        head = self._head(trainer, module, datamodule, features)
        task = copy.deepcopy(module.task)  # its own metrics and thresholds
        if not is_probabilistic(self.strategy.classifier):
            task.treat_scores_as_margins()  # SVM margins: no loss, no calibration error
        self.head_module = type(module)(
            head,
            Strategy(),
            module.optimizer_factory,
            module.scheduler_factory,
            module.regularisation,
            module.class_names,
            task,
        )
        if self.strategy.classifier == "linear":
            # A checkpoint already holding the whole model (killed after fit, in test): the head
            # trains again, cheaply, rather than load a backbone into the head's module.
            resume = ckpt_path if ckpt_path and not _whole_model(ckpt_path) else None
            trainer.fit(self.head_module, datamodule=self.features, ckpt_path=resume)
            self._load_best_head(trainer)
        else:  # nothing to train by gradient: score the fitted classifier on val like an epoch end
            trainer.validate(self.head_module, datamodule=self.features)
        self._ship_whole_model(trainer, module)

    def _head(self, trainer, module, datamodule, features: dict) -> nn.Module:
        """The classifier on features: a torch layer to train, or scikit-learn's fitted one as
        its exact torch equivalent (src/strategies/heads.py)."""
        from src.strategies.heads import KernelSVM, affine, install_linear

        num_features, num_classes = features["train"][0].shape[1], len(module.class_names)
        if self.strategy.classifier == "linear":  # the task's loss carries any class weights
            dropout = getattr(module.model, "drop_rate", 0.0)
            return LinearHead(num_features, num_classes, dropout=dropout)
        # scikit-learn's class_weight="balanced" is the same inverse-frequency rule
        weigh = datamodule.sampler == "balanced" or datamodule.class_weights == "auto"
        fitted, chosen = self._fit_sklearn(features, datamodule.seed, weigh, module.task)
        for logger in trainer.loggers:
            logger.log_metrics({"strategy/C": chosen}, step=0)
        if self.strategy.classifier == "svm":
            return KernelSVM.from_fitted(fitted, num_classes)
        weight, bias = affine(fitted, num_classes)
        head = LinearHead(num_features, num_classes)
        install_linear(head, torch.from_numpy(weight), torch.from_numpy(bias))
        return head

    def _load_best_head(self, trainer) -> None:
        """The head of the best validation epoch, as Strategy.test would test it."""
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            state = torch.load(callback.best_model_path, map_location="cpu", weights_only=True)
            self.head_module.load_state_dict(state["state_dict"])

    def _ship_whole_model(self, trainer, module) -> None:
        """The run's checkpoints become the whole model: the backbone with this head as its
        classifier, the task's thresholds, the class names, so eval, predict and export load a
        feature_extract run like any other. A linear head rewrites each checkpoint it trained
        (best and last keep their own head); a scikit-learn head writes last.ckpt."""
        from src.strategies.heads import head_record, install_linear, replace_classifier

        callback = trainer.checkpoint_callback
        if callback is None or not callback.dirpath or not trainer.is_global_zero:
            return
        folder = Path(callback.dirpath)
        folder.mkdir(parents=True, exist_ok=True)
        head = self.head_module.model
        trained_here = {callback.best_model_path, callback.last_model_path} - {""}
        saved = sorted(map(Path, trained_here)) if self.strategy.classifier == "linear" else []
        for path in saved or [folder / "last.ckpt"]:
            state = (
                torch.load(path, map_location="cpu", weights_only=True)
                if saved
                else {"state_dict": self.head_module.state_dict(), "epoch": 0, "global_step": 0}
            )
            trained = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
            if isinstance(head, LinearHead):
                install_linear(module.model, trained["fc.weight"], trained["fc.bias"])
            else:
                replace_classifier(module.model, head)
            tasks = {k: v for k, v in state["state_dict"].items() if k.startswith("task.")}
            state["state_dict"] = {
                **{f"model.{k}": v for k, v in module.model.state_dict().items()},
                **tasks,
            }
            state["class_names"] = list(module.class_names)
            state["head"] = head_record(self.strategy.classifier, head)
            torch.save(state, path)
        if not saved:  # Lightning saved nothing for a fitted head: the loggers upload this file
            callback.last_model_path = str(folder / "last.ckpt")
            for logger in trainer.loggers:
                logger.after_save_checkpoint(callback)
        log.info(
            "Checkpoints in %s hold the backbone with its %s head", folder, self.strategy.classifier
        )

    def _fit_sklearn(self, features: dict, seed: int, balanced: bool, task):
        """One classifier per C on train; with several, the one with the best validation accuracy
        (Kornblith et al. 2019's protocol: C chosen on a held-out split, the test split untouched)."""
        (x, y), (x_val, y_val) = (
            (f.numpy(), labels.numpy()) for f, labels in (features["train"], features["val"])
        )
        best = None
        for C in self.strategy.C:
            fitted = sklearn_classifier(
                self.strategy.classifier, C, self.strategy.max_iter, seed, balanced, task
            )
            fitted.fit(x, y)
            score = fitted.score(x_val, y_val) if len(self.strategy.C) > 1 else 0.0
            if best is None or score > best[0]:
                best = (score, fitted, C)
        return best[1], float(best[2])

    def test(self, trainer, module, datamodule) -> dict:
        """The head's test metrics, on the test split's cached features."""
        assert self.head_module is not None, "fit() first"
        self.features.features.update(self._features(trainer, module, datamodule, ("test",))[0])
        # The head already holds its best epoch; the checkpoints now hold the whole model.
        return trainer.test(self.head_module, datamodule=self.features)[0]

    def _features(self, trainer, module, datamodule, splits: tuple[str, ...]) -> tuple[dict, dict]:
        """Cached features of `splits` (test only when testing), cache statistics logged."""
        device = trainer.strategy.root_device
        features, stats = cached_features(
            module.model, datamodule, self.strategy.cache_dir, device, splits
        )
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"{key}/{'_'.join(splits)}": value for key, value in stats.items()}, step=0
            )
        return features, stats


def _whole_model(checkpoint: str) -> bool:
    """Whether FixedFeaturePipeline._ship_whole_model wrote this checkpoint (backbone + head, its `head` record)."""
    return "head" in torch.load(checkpoint, map_location="cpu", weights_only=True)
