"""Speed settings that are not Trainer arguments: channels_last, torch.compile, matmul precision."""

from __future__ import annotations

import logging

import lightning.pytorch as L
import torch

log = logging.getLogger(__name__)

MATMUL_PRECISIONS = ("highest", "high", "medium")


class SpeedUp(L.Callback):
    """Applied once at setup. `channels_last: auto` is on for CUDA (tensor cores want NHWC) and
    off on CPU, where NCHW convolutions are as fast or faster.

    compile uses `nn.Module.compile()`, which compiles in place: parameter names, and therefore
    checkpoints and the strategy's parameter groups, stay as they were.
    """

    def __init__(
        self,
        channels_last: bool | str = "auto",
        compile: bool = False,
        matmul_precision: str = "high",
    ):
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last={channels_last!r}: choose auto, true or false.")
        if matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"matmul_precision={matmul_precision!r}: choose one of {list(MATMUL_PRECISIONS)}."
            )
        self.channels_last, self.compile, self.matmul_precision = (
            channels_last,
            compile,
            matmul_precision,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_float32_matmul_precision(self.matmul_precision)  # TF32 on Ampere+; no-op on CPU
        on_cuda = trainer.strategy.root_device.type == "cuda"
        channels_last = on_cuda if self.channels_last == "auto" else self.channels_last
        if channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile and not getattr(pl_module, "_compiled", False):
            pl_module.model.compile()
            pl_module._compiled = True
        log.info(
            "Speed: channels_last=%s compile=%s matmul_precision=%s",
            channels_last,
            self.compile,
            self.matmul_precision,
        )
