"""Parameter-efficient fine-tuning: LoRA (through peft) and BitFit train a chosen subset of the
parameters, picked by name rather than by stage; the new head always trains.

LoRA's adapters live inside the backbone while it trains (peft's layers in place of the targeted
ones, so timm's group_matcher, the prefix cache and DDP see the usual model). Every checkpoint's
state_dict holds the adapters merged into the weights, the plain timm model that eval, predict and
export load without peft; the unmerged state rides along for resume and the best-checkpoint test.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from src.strategies.base import Strategy

log = logging.getLogger(__name__)

ADAPTER_STATE = "adapter_state_dict"  # a checkpoint's unmerged state (LoRA)


class ParamSubset(Strategy):
    """What trains is a property of each parameter (`trains`), fixed for the whole run; every
    stage group may hold some of it, so each group counts as trainable for the schedule."""

    def trains(self, name: str, is_head: bool) -> bool:
        """name: the parameter's full name in the model (e.g. blocks.0.conv.lora_A.default.weight)."""
        raise NotImplementedError

    def trainable(self, group: str, epoch: int) -> bool:
        return True

    def apply(self, model: nn.Module, groups, epoch: int) -> None:
        """requires_grad per parameter; BatchNorm learns statistics (bn=train) where it trains."""
        head = {id(p) for p in model.get_classifier().parameters()}
        for module_name, module in model.named_modules():
            own = list(module.named_parameters(recurse=False))
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            for key, param in own:
                trains = self.trains(f"{module_name}.{key}", id(param) in head)
                param.requires_grad_(trains and not (is_bn and self.bn == "frozen"))
            if is_bn:
                learns = any(p.requires_grad for _, p in own)
                module.train(self.bn == "train" and learns)

    def trained_parameters(self, model: nn.Module) -> dict[str, int]:
        """How many parameters train (the point of these strategies): the run logs it."""
        self.apply(model, [], epoch=0)  # as the run starts (configure_model does it again)
        params = list(model.parameters())
        trained = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        log.info(
            "%s: %d of %d parameters train (%.2f%%)",
            type(self).__name__,
            trained,
            total,
            100 * trained / total,
        )
        return {"strategy/trained_parameters": trained, "strategy/total_parameters": total}


class BitFit(ParamSubset):
    """BitFit (Ben Zaken et al. 2022): only the biases (in a CNN mostly BatchNorm's) and the head."""

    def trains(self, name: str, is_head: bool) -> bool:
        return is_head or name.endswith(".bias")


class LoRA(ParamSubset):
    """LoRA (Hu et al. 2022) via peft: low-rank adapters (rank, alpha, dropout) beside the targeted
    Linear/Conv2d layers; only they and the head train, the pretrained weights stay as they are.

    target_modules: null = every Linear and non-depthwise Conv2d of the backbone (not the head);
    or peft's own forms, a list of module-name suffixes (e.g. [qkv, fc1]) or one regular expression.
    """

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        bn: str = "train",
        **options,
    ):
        super().__init__(bn, **options)
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"strategy.rank={rank}: an integer >= 1.")
        if not alpha > 0:
            raise ValueError(f"strategy.alpha={alpha}: must be > 0.")
        if not 0 <= dropout < 1:
            raise ValueError(f"strategy.dropout={dropout}: valid range [0, 1).")
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.target_modules = target_modules
        self.model: nn.Module | None = None  # the backbone the adapters were put into

    def trains(self, name: str, is_head: bool) -> bool:
        return is_head or _is_adapter(name)

    # --- the adapters in the model --------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        self.add_adapters(model)
        super().check_model(model)

    def param_groups(self, model: nn.Module) -> list[dict]:
        self.add_adapters(model)
        return super().param_groups(model)

    def add_adapters(self, model: nn.Module) -> None:
        """peft's LoRA layers in place of the targets, once; a target list that matches nothing
        is refused with what could be targeted."""
        from peft import LoraConfig, inject_adapter_in_model

        if self.model is model:
            return
        candidates = lora_targets(model)
        targets = candidates if self.target_modules is None else self.target_modules
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(targets) if not isinstance(targets, str) else targets,
        )
        try:
            inject_adapter_in_model(config, model)
        except ValueError as error:
            raise ValueError(
                f"strategy.target_modules={self.target_modules}: {str(error).splitlines()[0]} "
                f"Layers LoRA can adapt here: {', '.join(candidates[:8])}, ..."
            ) from None
        head = {id(p) for p in model.get_classifier().parameters()}
        if any(_is_adapter(n) for n, p in model.named_parameters() if id(p) in head):
            raise ValueError("strategy.target_modules: the head trains fully; do not target it.")
        self.model = model

    # --- checkpoints: merged for use, unmerged for resume ---------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.model is not None and ADAPTER_STATE not in checkpoint:
            checkpoint[ADAPTER_STATE] = checkpoint["state_dict"]
            checkpoint["state_dict"] = merged_state(self.model, checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if ADAPTER_STATE in checkpoint:  # the adapters' own state, for the adapted model
            checkpoint["state_dict"] = checkpoint.pop(ADAPTER_STATE)


def _is_adapter(name: str) -> bool:
    return ".lora_" in name


def lora_targets(model: nn.Module) -> list[str]:
    """Every Linear and Conv2d outside the head; depthwise convolutions (groups > 1) excluded."""
    head = {id(m) for m in model.get_classifier().modules()}
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
        and id(module) not in head
        and getattr(module, "groups", 1) == 1
    ]


def merged_state(model: nn.Module, state: dict, prefix: str = "model.") -> dict:
    """A LightningModule state_dict of the adapted model with each adapter merged into its layer's
    weight (peft's own merge) and the plain layer names: what the un-adapted model loads."""
    from peft.tuners.lora import LoraLayer

    merged_model = copy.deepcopy(model)
    own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    merged_model.load_state_dict(own)
    for module in merged_model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    plain = {
        prefix + key.replace(".base_layer.", "."): value.detach().clone()
        for key, value in merged_model.state_dict().items()
        if ".lora_" not in key
    }
    return {**plain, **{k: v for k, v in state.items() if not k.startswith(prefix)}}
