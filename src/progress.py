"""Progress bars for the long steps outside Lightning's loops (feature extraction, image decoding,
prediction, sweep trials, advisor stages), drawn as Lightning's own TQDMProgressBar draws them:
tqdm on stdout, full-width, rate and ETA from the whole run (smoothing=0). `TQDM_DISABLE=1` in the
environment turns them off, as it does Lightning's."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    leave: bool = False,
    initial: int = 0,
):
    """A tqdm bar like Lightning's; iterate it, or call .update() / .set_postfix_str()."""
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    return Tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        initial=initial,
        dynamic_ncols=True,
        file=sys.stdout,
        smoothing=0,
        disable=os.environ.get("TQDM_DISABLE", "") not in ("", "0"),
    )
