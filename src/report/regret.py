"""Regret of a search against an exhaustive grid (experiments/advisor_regret, issue #31).

The grid trains every configuration of a search space once (seed 0) and the best learning rate
of each (backbone, strategy) with more seeds. Its **oracle** is the configuration with the best
mean validation accuracy over its seeds; the **regret** of a method is the oracle's test accuracy
minus the test accuracy of the model the method ships, at the compute the method used.

Random search is replayed on the grid's measured runs (a tabular benchmark): Optuna's
RandomSampler draws (backbone, strategy, value) from the same space; each new draw costs the
seconds its grid run took, a repeated draw costs nothing (its result is known); the search stops at
the first draw that would end past the budget and ships the draw best on validation. Replaying
costs nothing, so it is repeated over many sampler seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Config = tuple[str, str, int]  # (backbone, strategy, index of its value: lr or C, ascending)


@dataclass(frozen=True)
class Cell:
    """One configuration's seed-0 grid run: what a search would have seen and paid."""

    config: Config
    val_acc: float
    seconds: float
    run_id: str
    images: int = 0  # training images processed (train images x epochs): machine-independent


def oracle(seed_val_acc: dict[Config, Sequence[float]]) -> Config:
    """The configuration with the best mean validation accuracy over its seeds, among those with
    the most seeds (the grid's seeded cells: one per (backbone, strategy), at its best value)."""
    most = max(len(v) for v in seed_val_acc.values())
    seeded = {c: float(np.mean(v)) for c, v in seed_val_acc.items() if len(v) == most}
    return max(sorted(seeded), key=lambda c: seeded[c])


def best_value(cells: Sequence[Cell], backbone: str, strategy: str) -> Cell:
    """The (backbone, strategy)'s value best on validation (seed 0): where the grid adds seeds."""
    mine = [c for c in cells if c.config[:2] == (backbone, strategy)]
    if not mine:
        raise ValueError(f"no grid run of {backbone} + {strategy}")
    return max(mine, key=lambda c: (c.val_acc, -c.config[2]))


class Replay(NamedTuple):
    """One replayed search: the cell it ships and what it spent (seconds, training images)."""

    shipped: Cell
    seconds: float
    images: int


def random_search(cells: Sequence[Cell], budget_seconds: float, seed: int) -> Replay:
    """One replayed random search. The first draw always runs (a search that cannot afford one
    trial ships it anyway, over budget: said by its cost)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    by_config = {c.config: c for c in cells}
    space = {
        "backbone": CategoricalDistribution(sorted({c[0] for c in by_config})),
        "strategy": CategoricalDistribution(sorted({c[1] for c in by_config})),
        "value": CategoricalDistribution(sorted({c[2] for c in by_config})),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    seen: dict[Config, Cell] = {}
    spent = 0.0
    for _ in range(50 * len(by_config)):  # enough draws to see every cell with near certainty
        if len(seen) == len(by_config):
            break
        trial = study.ask(space)
        config = (trial.params["backbone"], trial.params["strategy"], trial.params["value"])
        cell = by_config.get(config)
        if cell is None:  # a grid run that failed: the search would have seen a failure
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if config not in seen:
            if seen and spent + cell.seconds > budget_seconds:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            spent += cell.seconds
            seen[config] = cell
        study.tell(trial, cell.val_acc)
    shipped = max(seen.values(), key=lambda c: (c.val_acc, -c.seconds))
    return Replay(shipped, spent, sum(c.images for c in seen.values()))


def random_searches(
    cells: Sequence[Cell], budget_seconds: float, repeats: int, seed: int = 0
) -> list[Replay]:
    """`repeats` replayed random searches with sampler seeds seed, seed + 1, ..."""
    return [random_search(cells, budget_seconds, seed + r) for r in range(repeats)]


def run_seconds(runs) -> dict[str, float]:
    """Each run's wall time, start to end. A run resumed after an interruption spans the time it
    was down too: it counts at the median of the uninterrupted runs of its strategy."""
    spans = {r.info.run_id: (r.info.end_time - r.info.start_time) / 1000 for r in runs}
    strategy = {r.info.run_id: r.data.tags.get("strategy", "") for r in runs}
    clean = {}
    for r in runs:
        if not r.data.tags.get("resumes"):
            clean.setdefault(strategy[r.info.run_id], []).append(spans[r.info.run_id])
    for r in runs:
        fallback = clean.get(strategy[r.info.run_id])
        if r.data.tags.get("resumes") and fallback:
            spans[r.info.run_id] = float(np.median(fallback))
    return spans
