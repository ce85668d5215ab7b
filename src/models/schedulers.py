"""LR schedules as LambdaLR factors, so every named group keeps its ratio to the others
(CosineAnnealingLR's absolute eta_min would not). Each factory returns Lightning's scheduler dict."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.0
) -> dict:
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to min_lr_ratio."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}


def step_decay(
    optimizer: Optimizer,
    total_steps: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> dict:
    """Multiply the lr by gamma at each milestone, given as a fraction of training."""
    steps = sorted(int(m * total_steps) for m in milestones)
    return {
        "scheduler": LambdaLR(optimizer, lambda step: gamma ** sum(step >= s for s in steps)),
        "interval": "step",
    }
