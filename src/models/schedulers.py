"""LR schedules as pure functions of the optimizer step, returning a factor of each group's lr.

The LightningModule multiplies this factor with the strategy's per-group factor (freezing,
unfreeze ramps) inside one LambdaLR, so every group keeps its ratio to the others and a resumed
run recomputes exactly the same rates from the restored step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Schedule = Callable[[int], float]


def cosine_with_warmup(
    total_steps: int, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.0
) -> Schedule:
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to min_lr_ratio."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def step_decay(
    total_steps: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
) -> Schedule:
    """Multiply the lr by gamma at each milestone, given as a fraction of training."""
    steps = sorted(int(m * total_steps) for m in milestones)
    return lambda step: gamma ** sum(step >= s for s in steps)


def constant(total_steps: int) -> Schedule:
    return lambda step: 1.0
