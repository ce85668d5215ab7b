"""Penalties that pull a fine-tuned network towards what it transferred (TLlib's regularisers)."""

from __future__ import annotations

import torch
from torch import nn


class L2SP(nn.Module):
    """L2-SP (Li et al. 2018): α/2·‖w − w⁰‖² over transferred weights, β/2·‖w_head‖² over the new head.

    w⁰ is a frozen copy taken when the run starts; parameters frozen by the strategy are skipped
    (they cannot move, and must cost nothing).
    """

    def __init__(self, model: nn.Module, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        self.names = [n for n, p in model.named_parameters() if id(p) not in head_ids]
        self.head_names = [n for n, p in model.named_parameters() if id(p) in head_ids]
        params = dict(model.named_parameters())
        # Plain tensors, not buffers: w0 is not part of the model's checkpoint or state.
        self.reference = {n: params[n].detach().clone() for n in self.names}

    def forward(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device
        total = torch.zeros((), device=device)
        for name in self.names if self.alpha else ():
            param = params[name]
            if param.requires_grad:
                reference = self.reference[name].to(param.device, non_blocking=True)
                self.reference[name] = reference
                total = total + 0.5 * self.alpha * (param - reference).pow(2).sum()
        for name in self.head_names if self.beta else ():
            if params[name].requires_grad and params[name].ndim > 1:  # weights, not biases
                total = total + 0.5 * self.beta * params[name].pow(2).sum()
        return total


def batch_spectral_shrinkage(features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """BSS (Chen et al. 2019): Σ of the k smallest squared singular values of the batch's features,
    which shrinks the spectral components that carry untransferable, noisy directions."""
    singular_values = torch.linalg.svdvals(features.float())
    return singular_values[-k:].pow(2).sum()
