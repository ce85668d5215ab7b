"""The prefix cache's activations (src/caching/prefix.py plans which layers): computed once per
image and split at the run's precision, stored in the TensorCache, served to Lightning in the same
order, batching, sampler and DDP shards as the images they were computed from."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn

from src.caching.prefix import Plan, passed_through, rng_untouched, run_prefix

log = logging.getLogger(__name__)


def cached_activations(
    current: Plan, model: nn.Module, datamodule, trainer: L.Trainer, cache_dir: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """({split: activations in the split's index order}, stats) for train and val."""
    from src.caching import TensorCache, state_fingerprint, structure_fingerprint

    store = TensorCache(cache_dir)
    device = trainer.strategy.root_device
    weights = state_fingerprint(
        item for module in current.modules for item in module.state_dict().items()
    )
    structure = structure_fingerprint(*current.modules)
    result, hits, seconds = {}, 0, 0.0
    for split in ("train", "val"):
        identity = {
            "architecture": getattr(model, "pretrained_cfg", {}).get("architecture"),
            "prefix": current.names,
            "weights": weights,
            "structure": structure,
            "input_size": getattr(model, "pretrained_cfg", {}).get("input_size"),
            "transform": datamodule.eval_transform_repr,
            "precision": str(trainer.precision),
            "data": datamodule.identity(split),
            "split": split,
        }
        with store.locked(identity):
            stored = store.load(identity)
            if stored is not None:
                result[split] = stored["inputs"]
                hits += 1
                continue
            start = time.perf_counter()
            result[split] = _extract(current.modules, datamodule, split, device, trainer)
            elapsed = time.perf_counter() - start
            path = store.save(identity, {"inputs": result[split]})
        seconds += elapsed
        shape = tuple(result[split].shape)
        log.info("Prefix cache %s: %s computed in %.1fs -> %s", split, shape, elapsed, path)
    return result, {"prefix_cache/hits": hits, "prefix_cache/extract_seconds": seconds}


@torch.inference_mode()
def _extract(modules, datamodule, split: str, device, trainer: L.Trainer) -> torch.Tensor:
    """The prefix's output for every image of a split, in order, at the run's precision."""
    from src.caching import inference_setup

    training = {m: m.training for module in modules for m in module.modules()}
    for module in modules:
        module.eval().to(device)
    try:
        outputs = []
        batch, _ = inference_setup(datamodule, device)
        with trainer.precision_plugin.forward_context():
            for images, _ in datamodule.eval_batches(split, device, batch):
                outputs.append(run_prefix(modules, images))
        return torch.cat(outputs).cpu()  # one copy back, no sync per batch
    finally:
        for module, flag in training.items():
            module.train(flag)


class PrefixDataModule(L.LightningDataModule):
    """The run's training and validation batches, as cached activations: the same order,
    batching, sampler and DDP shards as the images they were computed from."""

    def __init__(self, datamodule, activations: dict[str, torch.Tensor]):
        super().__init__()
        self.images, self.activations = datamodule, activations

    def train_dataloader(self):
        return self.images.cached_loader("train", self.activations["train"])

    def val_dataloader(self):
        return self.images.cached_loader("val", self.activations["val"])


@contextmanager
def prefix_cached(
    current: Plan, trainer: L.Trainer, module, datamodule, cache_dir: str | Path
) -> Iterator:
    """The data module to fit on: cached activations (the model's prefix passed through while
    inside) where `current` (the run's plan) allows, the images otherwise."""
    if not current.cached:
        log.info("Prefix cache: off (%s)", current.reason)
        yield datamodule
        return
    with rng_untouched():
        activations, stats = cached_activations(
            current, module.model, datamodule, trainer, cache_dir
        )
    log.info(
        "Prefix cache: on, %s computed once per image; the rest trains on %s activations",
        current.describe(),
        tuple(activations["train"].shape[1:]),
    )
    for logger in trainer.loggers:
        logger.log_metrics(stats, step=0)
    with passed_through(current.modules):
        yield PrefixDataModule(datamodule, activations)
