"""The advisor's budget: wall-clock seconds or a number of training runs, honoured by never
starting a unit of work whose estimated cost would end past its stage's share of the budget."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smht]?)\s*$")


@dataclass
class Budget:
    seconds: float | None = None  # a time budget
    runs: int | None = None  # a training-run budget (search trials + data runs)
    text: str = ""
    started: float = field(default_factory=time.monotonic)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, value, started: float | None = None) -> Budget:
        """'20m', '90s', '1.5h', '30t' (training runs), or a bare number of minutes; the clock
        runs from `started` (time.monotonic()), by default from now."""
        match = PATTERN.match(str(value))
        if not match or float(match.group(1)) <= 0:
            raise ValueError(
                f"budget={value!r}: give minutes or trials, e.g. budget=20m, budget=90s, "
                "budget=1h or budget=30t (a positive number)."
            )
        amount, unit = float(match.group(1)), match.group(2) or "m"
        if unit == "t":
            if amount != int(amount):
                raise ValueError(f"budget={value!r}: a number of trials is a whole number.")
            budget = cls(runs=int(amount), text=str(value))
        else:
            budget = cls(seconds=amount * UNITS[unit], text=str(value))
        budget.started = time.monotonic() if started is None else started
        return budget

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def deadline(self, share: float) -> float:
        """Seconds since the start until which a stage with this cumulative share may run."""
        return math.inf if self.seconds is None else share * self.seconds

    def fits(self, estimate: float, until: float, first: bool = False) -> bool:
        """Would a unit estimated at `estimate` seconds, started now, end by `until`? A first unit
        (nothing to report without it) only needs to start before `until`."""
        if first:
            return self.elapsed() < until
        return self.elapsed() + estimate <= until

    def time_limit(self, until: float) -> list[str]:
        """A training run's override that stops it at `until` (Lightning's max_time), should it
        run far longer than estimated (a machine that got busier): the budget still holds."""
        if self.seconds is None or until == math.inf:
            return []
        left = max(int(until - self.elapsed()), 1)
        return [f"++trainer.max_time='00:{left // 3600:02d}:{left // 60 % 60:02d}:{left % 60:02d}'"]

    def run_quota(self, share: float) -> int | None:
        """Training runs a stage with this share of a run budget may use (None: time budget)."""
        return None if self.runs is None else max(1, round(share * self.runs))

    def trials_per_backbone(self, share: float, count: int) -> list[int] | None:
        """The search's run quota split over `count` backbones, the first ones taking the
        remainder; they add up to the quota exactly (a run budget is never overrun), so with
        fewer trials than backbones the last ones get none. None: a time budget."""
        quota = self.run_quota(share)
        if quota is None:
            return None
        return [(quota + count - 1 - index) // count for index in range(count)]

    def skip(self, what: str) -> None:
        log.info("Budget: skipped %s", what)
        self.skipped.append(what)

    def describe(self) -> str:
        used = f"{self.elapsed() / 60:.1f} min"
        if self.seconds is not None:
            return f"{used} of {self.seconds / 60:.1f} min"
        return f"{used} (budget {self.runs} training runs)"


def scaled_estimate(measured: list[tuple[float, float]], factor: float) -> float:
    """Seconds of a unit whose cost factor is `factor`, from measured (seconds, factor) pairs:
    seconds ~ unit x factor, the unit taken as the largest measured ratio (conservative, so a
    budget is not overrun by the first expensive unit after cheap ones); 0 before any measurement."""
    if not measured:
        return 0.0
    return max(seconds / max(f, 1e-9) for seconds, f in measured) * factor
