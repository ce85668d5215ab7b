"""Lightning's DDP, told what a transfer strategy trains (conf/trainer/ddp.yaml).

DDP builds its gradient buckets when it wraps the model, over the parameters that require a
gradient at that moment, and then expects a gradient for each of them on every step. So:
- a strategy whose frozen set never changes (finetune, linear_probe, partial, surgical, layer_decay)
  freezes before the wrap (TransferModule.configure_model): DDP reduces exactly the parameters that
  train, with no unused-parameter error and no per-step graph search;
- a strategy that unfreezes during training (gradual_unfreeze, lp_ft) needs every parameter it will
  ever train in the buckets, and the ones still frozen reported as unused on each step:
  find_unused_parameters=True, for those strategies alone (it costs a graph traversal per step).
"""

from __future__ import annotations

import logging

from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy

log = logging.getLogger(__name__)


class TimmSyncBatchNorm(TorchSyncBatchNorm):
    """`trainer.sync_batchnorm=true` with timm's converter. torch's turns timm's BatchNormAct2d
    (norm and activation in one layer) into a plain SyncBatchNorm and so drops the activation: on
    an H100, a linear probe under trainer=ddp with sync_batchnorm scored chance (test acc 0.10)."""

    def apply(self, model):
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)

    def revert(self, model):
        # Lightning's revert rebuilds plain BatchNorm layers, dropping the activation again; synced
        # layers act as BatchNorm outside training (validation, test), so they stay.
        return model


class TransferDDP(DDPStrategy):
    # Lightning hands every DDP strategy a TorchSyncBatchNorm when sync_batchnorm is on.
    @property
    def _layer_sync(self):
        return self.__dict__.get("_sync_layers")

    @_layer_sync.setter
    def _layer_sync(self, plugin) -> None:
        if type(plugin) is TorchSyncBatchNorm:
            plugin = TimmSyncBatchNorm()
        self.__dict__["_sync_layers"] = plugin

    def configure_ddp(self) -> None:
        changes = getattr(
            getattr(self.lightning_module, "strategy", None), "changes_trainable", False
        )
        if changes:
            self._ddp_kwargs["find_unused_parameters"] = True
        trainable = sum(p.numel() for p in self.lightning_module.parameters() if p.requires_grad)
        log.info(
            "DDP over %d trainable parameters (find_unused_parameters=%s)",
            trainable,
            self._ddp_kwargs.get("find_unused_parameters", False),
        )
        super().configure_ddp()
