"""Data: sources of real images, stratified seeded splits and low-data subsets, one DataModule."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from functools import cached_property

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from src.data import coverage
from src.data.batch_transforms import BatchTransform, Uint8Square
from src.data.sampling import (
    CLASS_WEIGHTS,
    SAMPLERS,
    BalancedSampler,
    EpochShuffle,
    inverse_frequency,
)
from src.data.sources import ArrayImages, LabelledImages, Source
from src.data.splits import SplitIndices, cap_per_class, carve_test, split_official, split_pool

log = logging.getLogger(__name__)

__all__ = ["TransferDataModule"]

# Held-out test splits carved from sources without one use this seed, whatever the run's seed,
# so every run of a study is scored on the same images.
TEST_SPLIT_SEED = 0


class TransformedSubset(Dataset):
    def __init__(self, images: LabelledImages, indices: np.ndarray, transform: Callable | None):
        self.images, self.indices, self.transform = images, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[int(self.indices[index])]
        return (self.transform(image) if self.transform else image), label


class TensorSubset(Dataset):
    """uint8 images held as one tensor: a batch is one indexing operation, no per-image Python."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray, indices: np.ndarray):
        self.images, self.indices = images, torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.targets = torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[positions]
        return self.images[rows], self.targets[rows]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        row = int(self.indices[position])
        target = self.targets[row]
        return self.images[row], int(target) if target.dim() == 0 else target


def _already_batched(batch):
    return batch


class TransferDataModule(L.LightningDataModule):
    """Labelled pool -> (samples_per_class, fraction) -> stratified train/val. Test stays apart.
    A source with an official validation split keeps it whole; only train is subsampled.

    class_weights: null | auto (inverse class frequency of the training split, for the loss).
    sampler: shuffle | balanced (every class equally likely per draw, single-label only)."""

    def __init__(
        self,
        source: Callable[[], Source],
        batch_size: int = 64,
        num_workers: int | str = "auto",
        fraction: float = 1.0,
        samples_per_class: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        test_samples_per_class: int | None = None,
        seed: int = 0,
        transforms_on_device: bool | str = "auto",
        class_weights: str | None = None,
        sampler: str = "shuffle",
    ):
        super().__init__()
        if class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"dataset.class_weights={class_weights!r}: choose null or auto.")
        if sampler not in SAMPLERS:
            raise ValueError(f"dataset.sampler={sampler!r}: choose one of {list(SAMPLERS)}.")
        self.class_weights, self.sampler = class_weights, sampler
        _check_range("dataset.fraction", fraction, 0.0, 1.0, low_open=True)
        _check_range("dataset.val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        _check_range(
            "dataset.test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
        if samples_per_class is not None and samples_per_class < 2:
            raise ValueError(
                f"dataset.samples_per_class={samples_per_class}: must be >= 2 (or null)."
            )
        if test_samples_per_class is not None and test_samples_per_class < 1:
            raise ValueError(
                f"dataset.test_samples_per_class={test_samples_per_class}: must be >= 1 (or null)."
            )
        if batch_size < 1:
            raise ValueError(f"dataset.batch_size={batch_size}: must be >= 1.")
        self.source_factory = source
        if num_workers != "auto" and not (isinstance(num_workers, int) and num_workers >= 0):
            raise ValueError(f"dataset.num_workers={num_workers!r}: an integer >= 0, or auto.")
        # auto: every core but the one that trains (decoding files is the per-image work left).
        auto_workers = min(16, max(1, (os.cpu_count() or 2) - 1))
        self.batch_size = batch_size
        self.num_workers = auto_workers if num_workers == "auto" else num_workers
        self.fraction, self.samples_per_class = fraction, samples_per_class
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.test_samples_per_class = test_samples_per_class
        if transforms_on_device not in (True, False, "auto"):
            raise ValueError(
                f"dataset.transforms_on_device={transforms_on_device!r}: choose auto, true or false."
            )
        self.transforms_on_device = transforms_on_device
        self.train_transform: Callable | None = None
        self.eval_transform: Callable | None = None
        self.batch_transforms: tuple[BatchTransform, BatchTransform] | None = None

    @cached_property
    def source(self) -> Source:
        return self.source_factory()

    @cached_property
    def splits(self) -> SplitIndices:
        """Indices into the pool (train, val), the official val images and the test images."""
        splits = self._split()
        if not self.multilabel:
            self._check_coverage(splits)
        if self.test_samples_per_class is not None:
            # The same test images for every run and seed, so results stay comparable.
            test = self.source.test if self.source.test is not None else self.source.pool
            capped = cap_per_class(
                test.targets, splits.test, self.test_samples_per_class, TEST_SPLIT_SEED
            )
            splits = SplitIndices(splits.train, splits.val, capped)
        if self.sampler == "balanced" and self.multilabel:
            raise ValueError(
                "dataset.sampler=balanced draws by class, and a multi-label image has several: "
                "use dataset.class_weights=auto (a pos_weight per label) with sampler=shuffle."
            )
        log.info(
            "Data: %d %s | train %d, val %d, test %d%s",
            self.num_classes,
            "labels (multi-label)" if self.multilabel else "classes",
            len(splits.train),
            len(splits.val),
            len(splits.test),
            " (official val)" if self.source.val is not None else "",
        )
        return splits

    def _split(self) -> SplitIndices:
        pool, test = self.source.pool, self.source.test
        if self.source.val is not None:
            return split_official(
                pool.targets,
                len(self.source.val),
                len(test),
                self.fraction,
                self.samples_per_class,
                self.seed,
            )
        pool_idx, test_idx = np.arange(len(pool)), None
        if test is None:
            pool_idx, test_idx = carve_test(pool.targets, self.test_fraction, TEST_SPLIT_SEED)
        else:
            test_idx = np.arange(len(test))
        if not self.multilabel:
            coverage.check_pool(
                self.classes, pool.targets[pool_idx], self.samples_per_class, test is None
            )
        return split_pool(
            pool.targets,
            pool_idx,
            test_idx,
            self.fraction,
            self.samples_per_class,
            self.val_fraction,
            self.seed,
        )

    def _check_coverage(self, splits: SplitIndices) -> None:
        """Every class in train (and, where this module splits, in val and test)."""
        counts = {
            split: np.bincount(
                self.images(split).targets[getattr(splits, split)], minlength=self.num_classes
            )
            for split in ("train", "val", "test")
        }
        carved = self.source.test is None
        coverage.check_splits(
            self.classes,
            counts,
            self.val_fraction if self.source.val is None else None,
            self.test_fraction if carved else None,
            self.samples_per_class,
        )

    @property
    def multilabel(self) -> bool:
        return self.source.multilabel

    def train_targets(self) -> np.ndarray:
        return self.source.pool.targets[self.splits.train]

    @cached_property
    def loss_weights(self) -> torch.Tensor | None:
        """class_weights=auto: inverse class frequency of the training split (multi-label: a
        pos_weight per label), logged once; None otherwise."""
        if self.class_weights is None:
            return None
        weights = inverse_frequency(self.train_targets(), self.num_classes)
        log.info("Class weights (inverse frequency of train): %s", weights.numpy().round(3))
        return weights

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def num_classes(self) -> int:
        return len(self.source.classes)

    def set_transforms(
        self,
        train: Callable,
        eval: Callable,
        batch_train: BatchTransform | None = None,
        batch_eval: BatchTransform | None = None,
    ) -> None:
        """The backbone decides size, mean and std, so transforms arrive after it is built.

        Per-image transforms (train, eval) always work. The batch ones replace them when the data is
        held in memory (`transforms_on_device: auto`), or must (`true`)."""
        self.train_transform, self.eval_transform = train, eval
        available = batch_train is not None and batch_eval is not None
        if self.transforms_on_device is True and not available:
            raise ValueError(
                "dataset.transforms_on_device=true needs an augmentation that runs on batches "
                "(regularisation.augmentation none or basic, random_erasing 0). Use auto or false."
            )
        # auto: always for images in memory; for files only with a GPU, since on a CPU-only
        # machine the batch work would land on the process that also trains.
        wanted = self.transforms_on_device is True or (
            self.transforms_on_device == "auto" and (self.in_memory or torch.cuda.is_available())
        )
        use = available and wanted
        self.batch_transforms = (batch_train, batch_eval) if use else None
        if use and not self.in_memory:  # workers decode and square-resize; the rest per batch
            self.train_transform = self.eval_transform = Uint8Square(batch_eval.storage_size)
        log.info(
            "Data: %s",
            "uint8 batches, transformed on the device" if use else "per-image transforms",
        )

    @property
    def in_memory(self) -> bool:
        parts = (self.source.pool, self.source.val, self.source.test)
        return all(isinstance(part, ArrayImages | None) for part in parts)

    def images(self, split: str) -> LabelledImages:
        """The images a split's indices point into."""
        official = {"val": self.source.val, "test": self.source.test}.get(split)
        return official if official is not None else self.source.pool

    def _sampler(self, split: str, shuffle: bool) -> Sampler | None:
        """Training order: a seeded shuffle, or class-balanced draws (sampler=balanced)."""
        if not shuffle:
            return None
        indices = getattr(self.splits, split)
        if self.sampler == "balanced":
            return BalancedSampler(self.images(split).targets[indices], self.seed)
        return EpochShuffle(len(indices), self.seed)

    def prepare_data(self) -> None:
        self.source  # noqa: B018  (downloads, where a source downloads, happen once here)

    def setup(self, stage: str | None = None) -> None:
        self.splits  # noqa: B018

    def _loader(
        self, split: str, transform: Callable | None, shuffle: bool, shard: bool = False
    ) -> DataLoader:
        images = self.images(split)
        indices = getattr(self.splits, split)
        batched = self.batch_transforms is not None and self.in_memory  # one indexing op per batch
        dataset = (
            TensorSubset(images.as_tensor(), images.targets, indices)
            if batched
            else TransformedSubset(images, indices, transform)
        )
        sampler = _eval_shard(dataset) if shard else self._sampler(split, shuffle)
        workers = 0 if batched else self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=_already_batched if batched else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle and len(dataset) > self.batch_size,  # no size-1 BatchNorm batch
        )

    def eval_loader(self, split: str) -> DataLoader:
        """Any split in order, with the evaluation transform (feature extraction reads train so)."""
        return self._loader(split, self.eval_transform, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.batch_transforms is None:
            return batch
        images, labels = batch
        train_transform, eval_transform = self.batch_transforms
        if self.trainer is not None and self.trainer.training:
            loop = self.trainer.fit_loop.epoch_loop  # (seed, epoch, batch): resumes draw alike
            seed = (self.seed * 100_003 + self.trainer.current_epoch) * 100_003 + loop.batch_idx
            return train_transform(images, seed), labels
        return eval_transform(images), labels

    def eval_batches(self, split: str, device: torch.device):
        """(model-ready images on device, labels) for any split, in order, evaluation transform."""
        for images, labels in self.eval_loader(split):
            images = images.to(device, non_blocking=True)
            if self.batch_transforms is not None:
                images = self.batch_transforms[1](images)
            yield images, labels

    @property
    def eval_transform_repr(self) -> str:
        """What evaluation preprocessing is in force (part of a feature-cache key)."""
        if self.batch_transforms is not None:
            return f"{self.eval_transform!r} -> {self.batch_transforms[1]!r}"
        return repr(self.eval_transform)

    def identity(self, split: str) -> dict:
        """What determines a split's images: the source and the exact indices (which already
        encode fraction, samples_per_class, val_fraction and seed)."""
        factory = self.source_factory
        func = factory.func if isinstance(factory, functools.partial) else factory
        keywords = factory.keywords if isinstance(factory, functools.partial) else {}
        indices = getattr(self.splits, split)
        return {
            "source": f"{func.__module__}.{func.__qualname__}",
            "source_args": {k: _describe(v) for k, v in sorted(keywords.items())},
            "indices": hashlib.sha1(np.ascontiguousarray(indices).tobytes()).hexdigest(),
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_transform, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transform, shuffle=False, shard=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transform, shuffle=False, shard=True)


def _eval_shard(dataset: Dataset) -> Sampler | None:
    """Under DDP each rank scores its own slice of an evaluation split, every image exactly once.
    Lightning's default DistributedSampler would pad the split with repeats to an equal length per
    rank and count those images twice; torchmetrics sums the ranks' counts, so slices may differ
    in length (evaluation has no per-step collective: losses sync at the epoch's end)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def _describe(value) -> str:
    """A source argument as stable text: a nested partial (a wrapped source) by its name and
    arguments, not by its address, so cache keys survive the process."""
    if isinstance(value, functools.partial):
        args = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(value.keywords.items()))
        return f"{value.func.__module__}.{value.func.__qualname__}({args})"
    return str(value)


def _check_range(
    key: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{key}={value} is outside the valid range {interval}.")
