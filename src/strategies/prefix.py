"""The prefix-cache policy of a strategy: `strategy.cache_prefix`.

auto: on wherever caching the frozen layers' outputs is exact, otherwise off with a log line saying
why; true: the same, but a run where it cannot be exact is refused; false: off. The mechanism (which
layers, the activations on disk, training on them) is src/caching/prefix.py.
"""

from __future__ import annotations

MODES = ("auto", True, False)


def check_mode(value) -> None:
    if not (value == "auto" or isinstance(value, bool)):  # 0 and 1 equal False and True
        raise ValueError(f"strategy.cache_prefix={value!r}: choose auto, true or false.")


def check_plan(mode, plan) -> None:
    """cache_prefix=true refuses a run whose prefix cannot be cached exactly (plan.reason says why)."""
    if mode is True and not plan.cached:
        raise ValueError(
            f"strategy.cache_prefix=true, but no prefix can be cached exactly: "
            f"{plan.reason}. Use strategy.cache_prefix=auto or false."
        )
