"""The on-disk cache that feature_extract's features and the prefix cache's activations share:
one file per identity (weights, input size, data, split), written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch


def cache_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]


def structure_fingerprint(
    *modules: torch.nn.Module, leave_out: torch.nn.Module | None = None
) -> str:
    """What changes outputs without changing weights (pooling type, activations, layer settings):
    the modules' repr, less `leave_out` (a classifier the features do not pass through) and the
    settings of stochastic layers, which are idle in eval mode."""
    text = "\n".join(repr(m) for m in modules)
    if leave_out is not None:
        text = text.replace(repr(leave_out), "")
    stochastic = re.compile(r"^\s*\((drop\w*)\): |: (Dropout\w*|DropPath|DropBlock\w*)\(", re.I)
    text = "\n".join(line for line in text.splitlines() if not stochastic.search(line))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# Inference batches on a GPU: large enough to fill it, small enough for any backbone at 224 px.
GPU_INFERENCE_BATCH = 256


def inference_setup(datamodule, device: torch.device) -> tuple[int, bool]:
    """(batch size, channels_last) for running a frozen backbone over a split. NHWC on both: tensor
    cores want it, and oneDNN's CPU convolutions run it 1.1-2.6x faster than NCHW (2-core CPU,
    EfficientNet-Lite0 32-224 px, `python -m src.bench probe_cache`). On a GPU larger batches than
    training's; on a CPU the data set's batch (larger ones fall out of cache)."""
    if device.type == "cuda":
        return max(datamodule.batch_size, GPU_INFERENCE_BATCH), True
    return datamodule.batch_size, True


def save_cache(path: Path, tensors: dict, identity: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({**tensors, "identity": json.dumps(identity)}, tmp)
    os.replace(tmp, path)  # atomic: a parallel run never reads half a file
