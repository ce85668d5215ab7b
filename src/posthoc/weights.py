"""Weighted averages of state dicts, key by key: WiSE-FT's interpolation and model soups."""

from __future__ import annotations

import copy

import torch
from torch import nn


def average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i for floating-point tensors; integer buffers (BatchNorm's batch count)
    from the state of largest weight (ties: the last one). A single weight of 1 returns that state's tensors unchanged,
    bit for bit (no 1.0 * x + 0.0 * y rounding or sign of zero to differ)."""
    assert len(states) == len(weights) and states, "one weight per state"
    keys = list(states[0])
    assert all(list(state) == keys for state in states), "the states' keys differ"
    heaviest = states[max(range(len(weights)), key=lambda i: (weights[i], i))]  # ties: the last
    if sorted(weights)[-1] == 1.0 and sum(w != 0 for w in weights) == 1:
        return {key: value.clone() for key, value in heaviest.items()}
    mixed = {}
    for key in keys:
        if not heaviest[key].is_floating_point():
            mixed[key] = heaviest[key].clone()
            continue
        total = sum(w * state[key].double() for w, state in zip(weights, states, strict=True))
        mixed[key] = total.to(heaviest[key].dtype)
    return mixed


def with_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` holding `state` (the sources stay untouched)."""
    built = copy.deepcopy(model)
    built.load_state_dict(state)
    return built.eval()
