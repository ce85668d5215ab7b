"""The prefix cache: backbone layers frozen for the whole run are computed once per image.

A strategy that never trains the first layers of the backbone (linear_probe, partial, surgical
below its block, gradual_unfreeze below its last milestone), with their BatchNorm in eval mode and
no random pixel augmentation, computes the same output of those layers for an image in every
epoch. The prefix cache computes it once per image (cached on disk by src/caching's TensorCache,
src/caching/activations.py, under the feature cache's rules: architecture, the prefix's weights, input size and transform, data, split), trains the rest
of the network on those activations, and validates on them too. It is exact: the same batches, in
the same order, reach the same trainable layers; the model itself is untouched, so checkpoints
hold the whole network and eval/predict/export use it on images as usual.

How the network is split: one batch runs through the model with hooks, which records the chain of
modules its forward calls one after another on the image tensor (descending into nn.Sequential
stages). The prefix is the longest start of that chain whose modules hold no parameter that ever
trains, no BatchNorm that ever learns statistics and nothing random (dropout, drop path). Training
then calls the model's own forward on the cached activations with the prefix's modules passed
through, which is checked against the plain forward on real images before it is used.

`strategy.cache_prefix`: auto (on wherever that is exact, otherwise off with a log line saying
why), true (the same, but a run where it cannot be exact is refused), false (off).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

# Activations of one split held in memory and on disk at most: this share of the machine's RAM.
MEMORY_SHARE = 0.25


@dataclass
class Plan:
    """What a run caches: the prefix's modules in call order (the last one's output is cached),
    or why nothing is cached."""

    names: list[str] = field(default_factory=list)
    modules: list[nn.Module] = field(default_factory=list)
    reason: str | None = None

    @property
    def cached(self) -> bool:
        return self.reason is None

    def describe(self) -> str:
        first, last = self.names[0], self.names[-1]
        return first if first == last else f"{first} .. {last} ({len(self.names)} modules)"


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Every DataLoader draws its base seed from torch's global generator: planning and extracting
    must leave it as they found it, or dropout would draw other masks than an uncached run."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


def plan(strategy, model: nn.Module, regularisation, datamodule, max_epochs: int | None) -> Plan:
    """The prefix a run can cache exactly, or the reason it cannot (static checks first)."""
    with rng_untouched():
        return _plan(strategy, model, regularisation, datamodule, max_epochs)


def _plan(strategy, model, regularisation, datamodule, max_epochs) -> Plan:
    reason = _static_reason(strategy, regularisation, datamodule, max_epochs)
    if reason is not None:
        return Plan(reason=reason)
    learning = _learning_during_the_run(strategy, model, max_epochs)
    images = _sample_images(datamodule)
    calls = _record_calls(model, images)
    chosen = _longest_constant_chain(calls, learning)
    if not chosen:
        return Plan(reason="no layer before the first trainable one is frozen for the whole run")
    names = [call.name for call in chosen]
    modules = [call.module for call in chosen]
    per_image = chosen[-1].output[0].numel() * 4  # float32 on disk and in memory
    images_count = max(len(getattr(datamodule.splits, s)) for s in ("train", "val"))
    limit = MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if per_image * images_count > limit:
        return Plan(
            reason=f"the activations after {names[-1]} would take "
            f"{per_image * images_count / 2**30:.1f} GiB per split (limit {limit / 2**30:.1f} GiB, "
            f"{MEMORY_SHARE:.0%} of RAM)"
        )
    if not _splits_exactly(model, modules, images):
        return Plan(reason=f"the backbone's forward does not split after {names[-1]}")
    return Plan(names, modules)


def _static_reason(strategy, regularisation, datamodule, max_epochs) -> str | None:
    if strategy.cache_prefix is False:
        return "strategy.cache_prefix=false"
    if regularisation.augmentation != "none" or regularisation.random_erasing > 0:
        return (
            f"random pixel augmentation is on (regularisation.augmentation="
            f"{regularisation.augmentation}, random_erasing={regularisation.random_erasing}); "
            "regularisation.augmentation=none makes the frozen layers' output fixed per image"
        )
    if regularisation.mixup_alpha or regularisation.cutmix_alpha:
        return "mixup/cutmix mixes images before the backbone"
    if regularisation.needs_features:
        return "BSS needs the pooled features of every batch"
    if strategy.changes_trainable and not (max_epochs and max_epochs > 0):
        return "the strategy unfreezes by epoch and trainer.max_epochs is not set"
    if not hasattr(datamodule, "cached_loader"):
        return f"{type(datamodule).__name__} cannot serve cached activations"
    return None


@dataclass
class _Learning:
    """Parameters that train, and BatchNorm layers that learn statistics, in some epoch."""

    trained: set[int]
    learning_bn: set[int]


def _learning_during_the_run(strategy, model: nn.Module, max_epochs: int | None) -> _Learning:
    """Replays the strategy's freeze state for every epoch of the run, then restores the model."""
    grads = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    trained, learning_bn = set(), set()
    groups = strategy.param_groups(model)
    model.train()  # as Lightning sets it before each training epoch
    try:
        for epoch in range(max_epochs if strategy.changes_trainable else 1):
            strategy.apply(model, groups, epoch)
            trained |= {id(p) for p in model.parameters() if p.requires_grad}
            learning_bn |= {
                id(m)
                for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            }
    finally:
        for param, flag in grads.items():
            param.requires_grad_(flag)
        for module, flag in modes.items():
            module.train(flag)
    return _Learning(trained, learning_bn)


def _sample_images(datamodule, count: int = 4) -> torch.Tensor:
    images, _ = next(iter(datamodule.eval_batches("val", torch.device("cpu"))))
    return images[:count]


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor | None = None
    children: list[_Call] = field(default_factory=list)


def _record_calls(model: nn.Module, images: torch.Tensor) -> _Call:
    """The tree of module calls of one forward pass, with each call's tensor in and out (kept
    alive, so identity comparisons cannot be fooled by a reused address)."""
    stack: list[_Call] = []
    root: list[_Call] = []

    def before(name):
        def hook(module, args):
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            call = _Call(name, module, tensor)
            (stack[-1].children if stack else root).append(call)
            stack.append(call)

        return hook

    def after(module, args, output):
        stack.pop().output = output if isinstance(output, torch.Tensor) else None

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.train(flag)
    return root[0]


def _is_sequential(module: nn.Module) -> bool:
    return type(module).forward is nn.Sequential.forward


def _random(module: nn.Module) -> bool:
    """Dropout, drop path, drop block with a non-zero rate anywhere inside."""
    for m in module.modules():
        rate = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else None
        if rate is None and type(m).__name__.startswith("Drop"):
            rate = getattr(m, "drop_prob", getattr(m, "p", 0.0))
        if rate:
            return True
    return False


def _constant(module: nn.Module, learning: _Learning) -> bool:
    """Whether `module` computes the same output for an image in every epoch of the run."""
    return not (
        any(id(p) in learning.trained for p in module.parameters())
        or any(id(m) in learning.learning_bn for m in module.modules())
        or _random(module)
    )


def _longest_constant_chain(call: _Call, learning: _Learning) -> list[_Call]:
    """The calls at the start of `call`'s forward that pass the image tensor one to the next and
    are fixed for the run; a partly fixed nn.Sequential is entered."""
    chain, current = [], call.input
    for child in call.children:
        if current is None or child.input is not current or child.output is None:
            break
        if _constant(child.module, learning):
            chain.append(child)
            current = child.output
            continue
        if _is_sequential(child.module):
            chain += _longest_constant_chain(child, learning)
        break
    return chain


def run_prefix(modules: list[nn.Module], images: torch.Tensor) -> torch.Tensor:
    for module in modules:
        images = module(images)
    return images


def _passthrough(x, *args, **kwargs):
    return x


@contextmanager
def passed_through(modules: list[nn.Module]) -> Iterator[None]:
    """The model's forward, with the prefix's modules returning their input: fed the cached
    activations, it computes exactly what it computes on images."""
    own = [module.__dict__.get("forward") for module in modules]  # an instance's own forward
    for module in modules:
        module.forward = _passthrough
    try:
        yield
    finally:
        for module, forward in zip(modules, own, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _splits_exactly(model: nn.Module, modules: list[nn.Module], images: torch.Tensor) -> bool:
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            whole, activations = model(images), run_prefix(modules, images)
            with passed_through(modules):
                split = model(activations)
    finally:
        for module, flag in training.items():
            module.train(flag)
    return whole.shape == split.shape and torch.allclose(whole, split, rtol=1e-4, atol=1e-5)
