"""Bootstrap intervals and verdicts (src/report/intervals.py) on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from src.report.intervals import (
    Interval,
    accuracy_interval,
    correlation_interval,
    difference_interval,
    headline,
    verdict,
)


def nested(qualities, images=2000, seeds=3, seed=0):
    """Backbone k is right on every image easier than qualities[k] (the same images for every
    seed): each backbone's right answers include the weaker ones', in every resample."""
    difficulty = np.random.default_rng(seed).uniform(size=images)
    return [np.tile(difficulty < q, (seeds, 1)) for q in qualities]


def test_accuracy_interval_covers_a_known_p_about_95_percent_of_the_time():
    rng, p, covered = np.random.default_rng(0), 0.7, 0
    for trial in range(300):
        correct = rng.uniform(size=(1, 200)) < p  # one seed, 200 test images
        interval = accuracy_interval(correct, resamples=400, seed=trial)
        assert interval.estimate == pytest.approx(correct.mean())
        covered += interval.contains(p)
    assert 0.92 <= covered / 300 <= 0.98


def test_with_several_seeds_the_interval_is_conservative_not_narrower():
    rng, p, covered = np.random.default_rng(1), 0.7, 0
    for trial in range(200):
        covered += accuracy_interval(rng.uniform(size=(3, 150)) < p, 300, seed=trial).contains(p)
    assert covered / 200 >= 0.95  # Owen's pigeonhole bootstrap: >= the nominal level


def test_a_paired_difference_of_identical_cells_is_exactly_zero():
    (cell,) = nested([0.8], images=500)
    interval = difference_interval(cell, cell.copy(), resamples=200)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    better, worse = nested([0.8, 0.7], images=1000)
    gap = difference_interval(better, worse, resamples=500)
    assert gap.low <= gap.estimate <= gap.high and gap.low < 0.1 < gap.high  # the 0.1 band
    assert gap.high - gap.low < 0.05


def test_perfectly_ordered_backbones_have_tau_1_and_r_near_1():
    qualities = [0.5, 0.6, 0.7, 0.8]
    cells = nested(qualities)
    tau = correlation_interval(qualities, cells, "weighted_tau", resamples=300)
    assert tau.estimate == tau.low == tau.high == pytest.approx(1.0, abs=1e-12)
    r = correlation_interval(qualities, cells, "pearson", resamples=300)
    assert r.estimate > 0.999 and r.low > 0.99
    assert verdict(r, published=0.96, null=0.0, margin=0.1) == "agree"
    # A score recomputed on resampled training images: here always the same ranking.
    calls = []
    rescored = correlation_interval(
        qualities,
        cells,
        "weighted_tau",
        rescore=lambda rng: calls.append(1) or qualities,
        resamples=50,
    )
    assert len(calls) == 50 and rescored.low == pytest.approx(1.0, abs=1e-12)


def test_reversed_backbones_contradict_and_noise_is_inconclusive():
    qualities = [0.5, 0.6, 0.7, 0.8]
    reversed_cells = nested(qualities[::-1])
    r = correlation_interval(qualities, reversed_cells, "pearson", resamples=300)
    assert r.high < -0.99
    assert verdict(r, published=0.96, null=0.0, margin=0.1) == "contradict"
    # Four equally good backbones on 30 images: r could be almost anything.
    rng = np.random.default_rng(2)
    noise = [rng.uniform(size=(3, 30)) < 0.8 for _ in qualities]
    wide = correlation_interval(qualities, noise, "pearson", resamples=300)
    assert wide.low < 0 < 0.5 < wide.high
    assert verdict(wide, published=0.5, null=0.0) == "inconclusive"


def test_verdict_rules_and_headline():
    assert verdict(Interval(0.5, 0.4, 0.6), 0.55) == "agree"
    assert verdict(Interval(0.5, 0.4, 0.6), 0.75) == "contradict"
    assert verdict(Interval(0.5, 0.4, 0.6), 0.75, margin=0.2) == "agree"
    assert verdict(Interval(0.1, -0.2, 0.6), 0.5, null=0.0) == "inconclusive"
    assert verdict(Interval(np.nan, np.nan, np.nan), 0.5) == "inconclusive"
    text = headline("LP-FT - FT", Interval(0.012, 0.004, 0.02), 0.01, 0.0, scale=100)
    assert text == "LP-FT - FT = 1.2 [0.4, 2.0] (95 % bootstrap; published 1.0): **agree**."


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="different numbers of test images"):
        difference_interval(np.ones((2, 10), bool), np.ones((2, 11), bool))
    with pytest.raises(ValueError, match="statistic='spearman'"):
        correlation_interval([1, 2, 3], nested([0.1, 0.2, 0.3], 50), "spearman")


def test_the_mean_over_data_sets_of_perfect_rankings_is_1_and_logit_keeps_the_order():
    from src.report.intervals import mean_correlation_interval

    qualities = [0.5, 0.6, 0.7, 0.8]
    parts = [(qualities, nested(qualities, 500, seed=s), None) for s in (3, 4)]
    mean = mean_correlation_interval(parts, "weighted_tau", resamples=100)
    assert mean.estimate == pytest.approx(1.0) and mean.low == pytest.approx(1.0)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    r = correlation_interval(qualities, nested(qualities), resamples=200, transform=logit)
    assert r.estimate > 0.99 and r.low > 0.98  # logit(q) vs logit(q): still linear
