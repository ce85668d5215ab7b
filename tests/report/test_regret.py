"""src/report/regret.py: the oracle and the replayed random search against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from src.report.regret import Cell, best_value, oracle, random_search, random_searches


def grid() -> list[Cell]:
    """2 backbones x 2 strategies x 3 values; validation accuracy rises with the value index
    on backbone b, and b + finetune + value 2 is best. Every run costs 10 s."""
    cells = []
    for backbone, base in (("a", 0.5), ("b", 0.6)):
        for strategy, bonus in (("probe", 0.0), ("finetune", 0.1)):
            for value in range(3):
                config = (backbone, strategy, value)
                cells.append(
                    Cell(config, base + bonus + 0.01 * value, 10.0, "-".join(map(str, config)), 100)
                )
    return cells


def test_the_oracle_is_the_best_mean_over_the_seeded_configurations():
    seeds = {
        ("a", "probe", 0): [0.9],
        ("a", "ft", 1): [0.7, 0.8, 0.75],
        ("b", "ft", 0): [0.8, 0.8, 0.8],
    }
    assert oracle(seeds) == ("b", "ft", 0)  # 0.9 has one seed: not a seeded cell


def test_best_value_is_chosen_on_validation():
    assert best_value(grid(), "b", "finetune").config == ("b", "finetune", 2)
    with pytest.raises(ValueError, match="no grid run"):
        best_value(grid(), "c", "finetune")


def test_random_search_with_the_whole_grid_s_compute_finds_the_best_cell():
    cells = grid()
    for seed in range(5):
        replay = random_search(cells, budget_seconds=10.0 * len(cells), seed=seed)
        assert replay.shipped.config == ("b", "finetune", 2)
        assert replay.seconds == 10.0 * len(cells) and replay.images == 100 * len(cells)


def test_random_search_with_one_trial_ships_a_uniform_draw():
    """Budget for one run: the shipped cell is a uniform draw, so the mean shortfall from the best
    validation accuracy over many replays is the grid's mean shortfall (known: 0.1 + 0.01 * ...)."""
    cells = grid()
    best = max(c.val_acc for c in cells)
    expected = best - np.mean([c.val_acc for c in cells])
    replays = random_searches(cells, budget_seconds=10.0, repeats=600)
    assert all(r.seconds == 10.0 and r.images == 100 for r in replays)
    shortfall = best - np.mean([r.shipped.val_acc for r in replays])
    assert shortfall == pytest.approx(expected, abs=0.012)  # 600 draws: standard error ~0.003


def test_random_search_skips_failed_runs_and_pays_once_per_configuration():
    cells = [c for c in grid() if c.config != ("b", "finetune", 2)]  # that run failed
    replay = random_search(cells, budget_seconds=1e9, seed=3)
    assert replay.shipped.config == ("b", "finetune", 1) and replay.seconds == 10.0 * len(cells)
