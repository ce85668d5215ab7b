"""strategy=feature_extract's run (src/strategies/features.py): its classifier trains on cached
pooled features (src/pipelines/features.py), and the run ships the whole model: its checkpoints
rewritten to hold the backbone with that head, so eval, predict and export load it like any run."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn

from src.pipelines.features import (
    FeatureDataModule,
    LinearHead,
    cached_features,
    sklearn_classifier,
)
from src.strategies.base import Strategy

log = logging.getLogger(__name__)


class FixedFeaturePipeline:
    """strategy=feature_extract's run: the backbone runs once per split, its pooled features are
    cached on disk (src/pipelines/features.py), the strategy's classifier trains on them, and the
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
