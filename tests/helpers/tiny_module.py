"""A TransferModule on timm's tiny test_resnet over 10 digits a class, fitted by a bare Lightning
Trainer in a few seconds, and a callback that crashes it mid-epoch (the resume tests' kill)."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as L
import timm
import torch
from timm.data import resolve_model_data_config

from src.data import TransferDataModule
from src.data.preprocessing import eval_transform
from src.data.sources import digits
from src.models.module import TransferModule
from src.regularisation import Regularisation

LR = 0.02


def build_module(strategy, seed: int = 0, model_name: str = "test_resnet"):
    """(module, datamodule): a fresh tiny model (same weights for the same seed) and digits."""
    torch.manual_seed(seed)
    model = timm.create_model(
        model_name, num_classes=10, pretrained_cfg_overlay={"input_size": (3, 32, 32)}
    )
    datamodule = TransferDataModule(
        digits, batch_size=16, num_workers=0, samples_per_class=10, seed=seed
    )
    transform = eval_transform(resolve_model_data_config(model))
    datamodule.set_transforms(transform, transform)
    optimizer = functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.01)
    module = TransferModule(model, strategy, optimizer, None, Regularisation(), datamodule.classes)
    return module, datamodule


class CrashAt(L.Callback):
    """Stand-in for a killed job: dies in the middle of `epoch`."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


def fit_with_checkpoints(
    module, datamodule, directory: Path, callbacks=(), ckpt_path=None, epochs: int = 3, **kwargs
) -> L.Trainer:
    """Fit with a ModelCheckpoint on val/acc into directory, no logger. Every epoch is kept:
    Lightning 2.6 rewrites last.ckpt only in an epoch that saves a top-k checkpoint."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=directory, monitor="val/acc", mode="max", save_top_k=-1, save_last=True
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint, *callbacks],
        **kwargs,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer
