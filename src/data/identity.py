"""What determines a split's images, as stable text: the key of the feature cache."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import numpy as np


def split_identity(source_factory: Callable, indices: np.ndarray) -> dict:
    """The source (function and arguments) and the exact indices (which already encode fraction,
    samples_per_class, val_fraction and seed)."""
    factory = source_factory
    func = factory.func if isinstance(factory, functools.partial) else factory
    keywords = factory.keywords if isinstance(factory, functools.partial) else {}
    return {
        "source": f"{func.__module__}.{func.__qualname__}",
        "source_args": {k: describe(v) for k, v in sorted(keywords.items())},
        "indices": hashlib.sha1(np.ascontiguousarray(indices).tobytes()).hexdigest(),
    }


def describe(value) -> str:
    """A source argument as stable text: a nested partial (a wrapped source) by its name and
    arguments, not by its address, so cache keys survive the process."""
    if isinstance(value, functools.partial):
        args = ", ".join(f"{k}={describe(v)}" for k, v in sorted(value.keywords.items()))
        return f"{value.func.__module__}.{value.func.__qualname__}({args})"
    return str(value)
