"""The DataModule: a source's labelled pool -> stratified seeded train/val (and its low-data
subsets), the test split apart, loaders with per-image or on-device batch transforms."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import cached_property

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from src.data.batch_transforms import BatchTransform, Uint8Square
from src.data.datasets import TensorSubset, TransformedSubset, already_batched
from src.data.distributed import eval_shard
from src.data.identity import split_identity
from src.data.sampling import BalancedSampler, EpochShuffle, inverse_frequency
from src.data.sources import ArrayImages, LabelledImages, Source
from src.data.splits import SplitIndices, cap_per_class, carve_test, split_official, split_pool
from src.data.validation import check_pool, check_settings, check_splits

log = logging.getLogger(__name__)

# Held-out test splits carved from sources without one use this seed, whatever the run's seed,
# so every run of a study is scored on the same images.
TEST_SPLIT_SEED = 0


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
        flip_changes_label: bool = False,
    ):
        super().__init__()
        self.flip_changes_label = flip_changes_label  # read by test-time augmentation
        check_settings(
            batch_size=batch_size,
            num_workers=num_workers,
            fraction=fraction,
            samples_per_class=samples_per_class,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            test_samples_per_class=test_samples_per_class,
            transforms_on_device=transforms_on_device,
            class_weights=class_weights,
            sampler=sampler,
        )
        self.class_weights, self.sampler = class_weights, sampler
        self.source_factory = source
        # auto: every core but the one that trains (decoding files is the per-image work left).
        auto_workers = min(16, max(1, (os.cpu_count() or 2) - 1))
        self.batch_size = batch_size
        self.num_workers = auto_workers if num_workers == "auto" else num_workers
        self.fraction, self.samples_per_class = fraction, samples_per_class
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.test_samples_per_class = test_samples_per_class
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
            check_pool(self.classes, pool.targets[pool_idx], self.samples_per_class, test is None)
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
        check_splits(
            self.classes,
            counts,
            self.val_fraction if self.source.val is None else None,
            self.test_fraction if self.source.test is None else None,
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
        self,
        split: str,
        transform: Callable | None,
        shuffle: bool,
        shard: bool = False,
        dataset: Dataset | None = None,
        batch_size: int | None = None,
    ) -> DataLoader:
        """dataset: the split's images, or one tensor per image of it (in index order);
        batch_size: the data set's unless given (inference can take larger batches)."""
        batch_size = batch_size or self.batch_size
        images = self.images(split)
        indices = getattr(self.splits, split)
        batched = dataset is not None or (self.batch_transforms is not None and self.in_memory)
        if dataset is None:  # batched: one indexing op per batch
            dataset = (
                TensorSubset(images.as_tensor(), images.targets, indices)
                if batched
                else TransformedSubset(images, indices, transform)
            )
        sampler = eval_shard(dataset) if shard else self._sampler(split, shuffle)
        workers = 0 if batched else self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=already_batched if batched else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle and len(dataset) > batch_size,  # no size-1 BatchNorm batch
        )

    def cached_loader(self, split: str, inputs: torch.Tensor) -> DataLoader:
        """The split's loader (order, batches, sampler, DDP shards) over tensors computed ahead,
        one per image in the split's index order (a frozen prefix's outputs): no transform."""
        targets = self.images(split).targets[getattr(self.splits, split)]
        dataset = TensorSubset(inputs, targets, np.arange(len(inputs)))
        training = split == "train"
        return self._loader(split, None, shuffle=training, shard=not training, dataset=dataset)

    def eval_loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """Any split in order, with the evaluation transform (feature extraction reads train so)."""
        return self._loader(split, self.eval_transform, shuffle=False, batch_size=batch_size)

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

    def eval_batches(self, split: str, device: torch.device, batch_size: int | None = None):
        """(model-ready images on device, labels) for any split, in order, evaluation transform."""
        for images, labels in self.eval_loader(split, batch_size):
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
        return split_identity(self.source_factory, getattr(self.splits, split))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_transform, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transform, shuffle=False, shard=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transform, shuffle=False, shard=True)
