"""Data, one module per job: sources of real images (sources.py, medmnist.py), stratified seeded
splits (splits.py), validation of the settings (validation.py), the Dataset views (datasets.py),
samplers (sampling.py), batch transforms (batch_transforms.py), DDP evaluation shards
(distributed.py), the feature-cache identity (identity.py) and the DataModule (datamodule.py)."""

from src.data.datamodule import TEST_SPLIT_SEED, TransferDataModule

__all__ = ["TEST_SPLIT_SEED", "TransferDataModule"]
