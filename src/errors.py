"""The one error type for input a researcher got wrong: the entry points print its message (which
names the key and what is valid) and exit 2, without a traceback and before any work starts."""

from __future__ import annotations

import sys
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


# A job stopped by SIGTERM (a scheduler, `kill`) exits 128 + 15, as a shell reports it, so that
# `&&` chains and schedulers never read it as a success.
SIGTERM_EXIT = 143


class Terminated(SystemExit):
    """SIGTERM outside Lightning's loops (building, feature extraction): raised at once."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT)


def is_sigterm(error: BaseException) -> bool:
    """Ours, or Lightning's SIGTERMException (a SystemExit with code None: exit status 0).
    Only a process that imported Lightning can raise the latter: asking never imports it (every
    `--help` and refusal ends in a SystemExit, and Lightning's import costs seconds)."""
    if isinstance(error, Terminated):
        return True
    lightning_exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return lightning_exceptions is not None and isinstance(
        error, lightning_exceptions.SIGTERMException
    )


class SigtermSeen:
    """Whether SIGTERM arrived: Lightning does not always act on it (in the last evaluation batch,
    after the last training batch), so the entry point checks between its stages too."""

    received = False

    def check(self) -> None:
        if self.received:
            raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[SigtermSeen]:
    """SIGTERM raises Terminated, so the run is recorded KILLED and the exit status is 143.

    Inside fit/test Lightning installs its own handler, which calls this one too: there it is only
    noted, and Lightning raises SIGTERMException at its next safe point (never mid-checkpoint), or
    the entry point does when that stage ends (`SigtermSeen.check`)."""
    import signal
    import threading

    seen = SigtermSeen()
    if threading.current_thread() is not threading.main_thread():
        yield seen  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame) -> None:
        seen.received = True
        if signal.getsignal(signal.SIGTERM) is handler:
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
