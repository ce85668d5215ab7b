"""The one error type for input a researcher got wrong: the entry points print its message (which
names the key and what is valid) and exit 2, without a traceback and before any work starts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class InvalidInput(ValueError):
    """Bad config value, unknown name, missing path or unavailable asset."""


class AssetUnavailable(RuntimeError):
    """Weights or data that cannot be had here (offline, not installed); the message says what can."""


@contextmanager
def refuse_bad_input() -> Iterator[None]:
    """Inside: a constructor's or check's ValueError / missing file / unavailable asset is bad
    input, not a bug. Outside it, the same exceptions keep their tracebacks."""
    try:
        yield
    except InvalidInput:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError, AssetUnavailable) as error:
        raise InvalidInput(str(error)) from error
