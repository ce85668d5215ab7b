"""DDP evaluation: each rank scores its own slice of a split."""

from __future__ import annotations

from torch.utils.data import Dataset, Sampler


def eval_shard(dataset: Dataset) -> Sampler | None:
    """Under DDP each rank scores its own slice of an evaluation split, every image exactly once.
    Lightning's default DistributedSampler would pad the split with repeats to an equal length per
    rank and count those images twice; torchmetrics sums the ranks' counts, so slices may differ
    in length (evaluation has no per-step collective: losses sync at the epoch's end)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)
