"""Named parameter groups from timm's `group_matcher`, ordered from the input to the head.

Stages are never guessed from parameter names: timm's coarse matcher defines them. The new
classifier (`get_classifier()`) is always its own group, `head`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

HEAD = "head"
NO_WD = "_no_wd"  # suffix of a group's norms and biases, which get no weight decay


def stage_of(group_name: str) -> str:
    """The stage a (possibly _no_wd) optimizer group belongs to."""
    return group_name.removesuffix(NO_WD)


def model_no_weight_decay(model: nn.Module) -> set[str]:
    """The names a timm model declares exempt from weight decay (ViT: pos_embed, cls_token)."""
    declared = getattr(model, "no_weight_decay", None)
    return set(declared()) if callable(declared) else set()


@contextmanager
def _all_trainable(model: nn.Module) -> Iterator[None]:
    # timm's helpers skip frozen parameters; a frozen stage still gets its (zero-lr) group here.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


def no_weight_decay_ids(model: nn.Module) -> set[int]:
    """Parameters timm exempts from weight decay: norms and biases (1-D) and the model's own
    `no_weight_decay()` names, decided by timm's `param_groups_weight_decay`."""
    with _all_trainable(model):
        groups = param_groups_weight_decay(
            model, weight_decay=1.0, no_weight_decay_list=model_no_weight_decay(model)
        )
    return {id(p) for group in groups if group["weight_decay"] == 0.0 for p in group["params"]}


def split_weight_decay(
    name: str, params: list[nn.Parameter], lr_scale: float, no_decay_ids: set[int]
) -> list[dict]:
    """Weights keep the optimizer's weight decay; those in `no_decay_ids` (timm's rule) get none."""
    decayed = [p for p in params if id(p) not in no_decay_ids]
    groups = [{"name": name, "params": decayed, "lr_scale": lr_scale}]
    no_decay = [p for p in params if id(p) in no_decay_ids]
    if no_decay:
        groups.append(
            {"name": name + NO_WD, "params": no_decay, "lr_scale": lr_scale, "weight_decay": 0.0}
        )
    return groups


def stage_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """[("stem", ...), ("stage1", ...), ..., ("head", classifier params)]."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    params = dict(model.named_parameters())
    if not hasattr(model, "group_matcher"):  # a bare head on cached features
        by_layer = {0: list(params)}
    else:
        by_layer = group_parameters(model, model.group_matcher(coarse=True))
    stages = []
    for layer in sorted(by_layer):
        members = [params[name] for name in by_layer[layer] if id(params[name]) not in head_ids]
        if members:
            stages.append(members)
    names = (["stem"] + [f"stage{i}" for i in range(1, len(stages))])[: len(stages)]
    head = [p for p in model.parameters() if id(p) in head_ids]
    groups = [*zip(names, stages, strict=True), (HEAD, head)]
    assert sum(len(g) for _, g in groups) == len(params), "every parameter in exactly one group"
    return groups


def layer_decay_groups(model: nn.Module, decay: float, min_scale: float = 0.0) -> list[dict]:
    """timm's layer-wise decay groups (lr_scale = decay^depth from the head), named.

    timm also splits each layer into weight-decayed and not (norms and biases): those groups get
    weight_decay=0 and a `_no_wd` suffix; the others inherit the optimizer's weight decay.
    """
    groups = param_groups_layer_decay(
        model,
        weight_decay=1.0,
        no_weight_decay_list=model_no_weight_decay(model),
        layer_decay=decay,
        min_scale=min_scale,
    )
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    depth = {scale: i for i, scale in enumerate(sorted({g["lr_scale"] for g in groups}))}
    named = []
    for group in groups:
        is_head = any(id(p) in head_ids for p in group["params"])
        name = HEAD if is_head else f"layer{depth[group['lr_scale']]:02d}"
        entry = {"name": name, "params": group["params"], "lr_scale": group["lr_scale"]}
        if group["weight_decay"] == 0.0:
            entry.update(name=name + NO_WD, weight_decay=0.0)
        named.append(entry)
    return named
