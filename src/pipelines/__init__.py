"""How a run computes what its strategy decided. A strategy is a policy (which parameters train,
when, at which lr, what it needs from the data); its pipeline runs Lightning on that data. The road
(src/training.py) builds the one its strategy names (pipeline_for), calls `plan` while checking,
then `fit`, then `test`; no strategy calls trainer.fit or trainer.test.

- ImagePipeline (here): the model on images, the frozen prefix's activations cached where exact
  (src/caching/prefix.py).
- FixedFeaturePipeline (src/pipelines/fixed_features.py): strategy=feature_extract's classifier on cached
  pooled features, its checkpoints rewritten into the whole model.
"""

from __future__ import annotations

import lightning.pytorch as L
from torch import nn


def pipeline_for(strategy):
    """The pipeline the strategy names (`Strategy.pipeline`, an import path), built for it."""
    from hydra.utils import get_class

    return get_class(strategy.pipeline)(strategy)


class ImagePipeline:
    """The model trains on images; layers frozen for the whole run are computed once per image
    where that is exact (strategy.cache_prefix, strategy.prefix_cache_dir)."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.prefix_plan = None  # set by plan(), before the run

    def plan(self, model: nn.Module, regularisation, datamodule, max_epochs: int) -> None:
        """Decide what the run caches (before it starts); cache_prefix=true refuses a run where
        the cache cannot be exact."""
        from src.caching.prefix import plan
        from src.strategies.prefix import check_plan

        self.prefix_plan = plan(self.strategy, model, regularisation, datamodule, max_epochs)
        check_plan(self.strategy.cache_prefix, self.prefix_plan)

    def fit(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str | None = None,
    ) -> None:
        """ckpt_path: resume from it (weights, optimizer, LR schedule, epoch, RNG)."""
        from src.caching.activations import prefix_cached
        from src.caching.prefix import plan

        current = self.prefix_plan or plan(
            self.strategy, module.model, module.regularisation, datamodule, trainer.max_epochs
        )
        cache_dir = self.strategy.prefix_cache_dir
        with prefix_cached(current, trainer, module, datamodule, cache_dir) as data:
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    def test(
        self, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule
    ) -> dict:
        """Test metrics of the best checkpoint (the last weights when nothing was checkpointed)."""
        checkpoint = trainer.checkpoint_callback
        best = "best" if checkpoint is not None and checkpoint.best_model_path else None
        return trainer.test(module, datamodule=datamodule, ckpt_path=best)[0]
