"""Host synchronisations of a training run, counted on any device (a CPU is enough).

A sync is anything that makes the host wait for the device: reading a value back (`item`, `tolist`,
`cpu`, `numpy`, `bool()`/`float()`/`int()` of a tensor) or an op whose output shape depends on the
data (nonzero, masked_select, unique, bincount, boolean-mask indexing...). On a CPU they cost
nothing, but each one stalls a GPU's queue, so they are found here, where tests run.

`SyncCounter` patches the Python methods and watches aten ops through a TorchDispatchMode;
`StepWindows` files every sync under the training batch it happened in (from fetching the batch
to logging it), so a test can ask which steps synced and why.
"""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning.pytorch as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode

READBACK_METHODS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
)

_aten = torch.ops.aten
# Ops whose output shape (or value on the host) depends on the data: the device must finish first.
DATA_DEPENDENT_OPS = {
    _aten._local_scalar_dense.default,
    _aten.is_nonzero.default,
    _aten.equal.default,
    _aten.nonzero.default,
    _aten.nonzero_static.default,
    _aten.masked_select.default,
    _aten.masked_scatter.default,
    _aten._unique.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.bincount.default,
    _aten.repeat_interleave.Tensor,
    _aten.histc.default,
    # LAPACK-style ops that check their `info` on the host (torch's _linalg_check_errors)
    _aten._linalg_svd.default,
    _aten._linalg_eigh.default,
}


@dataclass
class Sync:
    what: str  # "Tensor.item", "aten.nonzero", ...
    where: str  # the innermost frames outside torch, for a readable failure


# Code whose tensors stay on the host on every machine, so reading them is no sync. Callers:
# torch's optimizers keep each step count on the CPU (unless capturable or fused), samplers draw
# the epoch's order with a CPU generator. Anywhere below: a DataLoader's fetch, where datasets
# read and transform images per image, on the host (a worker process has no device).
HOST_SIDE_CALLERS = ("/torch/optim/", "/torch/utils/data/", "/src/data/sampling.py")
HOST_SIDE_STACKS = ("/torch/utils/data/_utils/fetch.py",)


def _on_host(frame) -> bool:
    if any(part in frame.f_code.co_filename for part in HOST_SIDE_CALLERS):
        return True
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in HOST_SIDE_STACKS):
            return True
        frame = frame.f_back
    return False


@dataclass
class SyncCounter:
    """Counts syncs while active, except reads on the host side (_on_host)."""

    syncs: list[Sync] = field(default_factory=list)
    _depth: int = 0  # inside a patched method: its own aten ops are the same sync

    def record(self, what: str) -> None:
        self.syncs.append(Sync(what, _caller()))

    @contextmanager
    def active(self):
        own = {name: vars(torch.Tensor).get(name) for name in READBACK_METHODS}
        for name in READBACK_METHODS:
            setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        try:
            with _DataDependentOps(self):
                yield self
        finally:
            for name, method in own.items():  # inherited ones (C slots) are inherited again
                if method is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, method)

    def _counting(self, name: str, method):
        counter = self

        def counted(tensor, *args, **kwargs):
            if counter._depth == 0 and not _on_host(sys._getframe(1)):
                counter.record(f"Tensor.{name}")
            counter._depth += 1
            try:
                return method(tensor, *args, **kwargs)
            finally:
                counter._depth -= 1

        return counted


class _DataDependentOps(TorchDispatchMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            self.counter._depth == 0
            and _is_data_dependent(func, args)
            and not _on_host(sys._getframe(1))
        ):
            self.counter.record(f"aten.{func.__name__}")
        return func(*args, **kwargs)


def _is_data_dependent(func, args) -> bool:
    if func in DATA_DEPENDENT_OPS:
        return True
    # x[mask] and x[mask] = v index with a boolean tensor: a nonzero inside.
    if func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
    return False


def _caller(depth: int = 10) -> str:
    frames = [
        f
        for f in traceback.extract_stack()[:-3]
        if "/torch/" not in f.filename and "src/bench/syncs.py" not in f.filename
    ]
    return " <- ".join(
        f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in frames[-depth:][::-1]
    )


@dataclass
class Window:
    """One training batch: from fetching it to logging it."""

    epoch: int
    step: int  # global step before this batch's optimizer step
    logging: bool  # Lightning logs (and reads values back) on this batch
    last: bool = False  # the epoch's last batch: epoch-end work follows it
    syncs: list[Sync] = field(default_factory=list)

    @property
    def free(self) -> bool:
        """A sync is allowed here: a logging step or an epoch's end."""
        return self.logging or self.last


class StepWindows(L.Callback):
    """Files the counter's syncs under the training batch they happened in. Lightning runs each
    batch as `advance` (fetch, transfer, step, callbacks, logging) then `on_advance_end`
    (validation at an epoch's end); both are wrapped on the trainer's own loop."""

    def __init__(self, counter: SyncCounter):
        self.counter = counter
        self.windows: list[Window] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        loop = trainer.fit_loop.epoch_loop
        advance, advance_end = loop.advance, loop.on_advance_end

        def windowed_advance(*args, **kwargs):
            self.counter.syncs.clear()
            window = Window(
                trainer.current_epoch,
                trainer.global_step,
                # Whether Lightning logs this step: only its logger connector knows (no public API).
                logging=trainer._logger_connector.should_update_logs,
            )
            self.windows.append(window)
            try:
                return advance(*args, **kwargs)
            finally:
                window.last = loop.batch_progress.is_last_batch

        def windowed_advance_end(*args, **kwargs):
            try:
                return advance_end(*args, **kwargs)
            finally:
                self.windows[-1].syncs = list(self.counter.syncs)
                self.counter.syncs.clear()

        loop.advance, loop.on_advance_end = windowed_advance, windowed_advance_end

    def offending(self) -> list[Window]:
        """Batches that synced although nothing is logged there and no epoch ends."""
        return [w for w in self.windows if w.syncs and not w.free]
