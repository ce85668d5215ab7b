"""The one cache of computed tensors: feature_extract's pooled features (src/pipelines/features.py)
and the prefix cache's activations (src/caching/prefix.py) are the same idea. One key (cache_key of
an identity: architecture, weights, structure, data, split, transform), one state-dict fingerprint
(state_fingerprint), one store (TensorCache: a file per identity, written atomically, one writer)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock


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


def state_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash of named tensors (a state dict's items): what a cached output depends on in weights."""
    digest = hashlib.sha1()
    for key, tensor in tensors:
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TensorCache:
    """One folder of cached tensors, one file per identity (cache_key). Under `locked`, one
    process computes and saves, the others (DDP ranks started by torchrun or srun, parallel sweep
    workers) wait for it and read its file; a shared file system gives one lock per cluster."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, identity: dict) -> Path:
        return self.folder / f"{cache_key(identity)}.pt"

    @contextmanager
    def locked(self, identity: dict) -> Iterator[None]:
        with FileLock(str(self.path(identity).with_suffix(".lock"))):
            yield

    def load(self, identity: dict) -> dict | None:
        path = self.path(identity)
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def save(self, identity: dict, tensors: dict) -> Path:
        path = self.path(identity)
        save_cache(path, tensors, identity)
        return path
