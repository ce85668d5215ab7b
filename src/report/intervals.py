"""95 % bootstrap intervals for studies, and a verdict against a published value.

Every interval is a percentile bootstrap over what varies between repetitions of a study:
- the test images (drawn with replacement; the same draw for every run of a resample, since all
  runs on a data set score the same fixed test split: the comparison stays paired),
- the seeds of each cell (drawn with replacement within the cell),
- for a transferability score, optionally the scored training images (`rescore` recomputes the
  score on a resample of them).
The backbones (the points of a correlation) stay fixed: the question is about these models.
Resampling images and seeds independently is Owen's (2007) "pigeonhole" bootstrap for a crossed
design: mildly conservative (the image-by-seed noise is counted in both factors), so with several
seeds a 95 % interval covers at least 95 %; with one seed it is the plain bootstrap over images.

Inputs are per-image correctness arrays, bool [seeds, images] per cell (src/tracking/predictions.py
logs them for every run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float = LEVEL

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def format(self, scale: float = 1.0, digits: int = 3) -> str:
        e, lo, hi = (scale * v for v in (self.estimate, self.low, self.high))
        return f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def percentile_interval(estimate: float, values: np.ndarray, level: float = LEVEL) -> Interval:
    """The percentile interval of bootstrap draws around `estimate`; non-finite draws dropped."""
    values = values[np.isfinite(values)]  # e.g. r of a resample where all accuracies tie
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
    return Interval(float(estimate), float(low), float(high), level)


def _as_cells(correct: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each cell as float [seeds, images]; every cell must score the same number of images."""
    cells = [np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in correct]
    sizes = {c.shape[1] for c in cells}
    if len(sizes) != 1:
        raise ValueError(f"cells score different numbers of test images: {sorted(sizes)}")
    return cells


def resampled_accuracies(
    correct: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Accuracy of every cell in every bootstrap resample [resamples, cells]: one draw of the
    test images per resample (shared by all cells), the seeds drawn within each cell."""
    cells = _as_cells(correct)
    images = cells[0].shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(cells)))
    for start in range(0, resamples, 250):  # counts of 250 resamples x images at a time
        count = min(250, resamples - start)
        weights = rng.multinomial(images, np.full(images, 1 / images), size=count) / images
        for k, cell in enumerate(cells):
            per_seed = weights @ cell.T  # [count, seeds]
            drawn = rng.integers(0, len(cell), size=(count, len(cell)))
            out[start : start + count, k] = np.take_along_axis(per_seed, drawn, 1).mean(1)
    return out


def accuracy_interval(
    correct: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> Interval:
    """A cell's accuracy (mean over seeds and test images) with its bootstrap interval."""
    (cell,) = _as_cells([correct])
    return percentile_interval(
        cell.mean(), resampled_accuracies([cell], resamples, seed)[:, 0], level
    )


def difference_interval(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """Accuracy of a minus accuracy of b on the same test images (paired), e.g. LP-FT - FT."""
    a, b = _as_cells([correct_a, correct_b])
    drawn = resampled_accuracies([a, b], resamples, seed)
    return percentile_interval(a.mean() - b.mean(), drawn[:, 0] - drawn[:, 1], level)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return np.nan
    return float(np.corrcoef(x, y)[0, 1])


def weighted_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Weighted Kendall tau (scipy's hyperbolic weights, ranked by x: the models a score puts first
    weigh most), as the LogME and SFDA papers report it."""
    from scipy.stats import weightedtau

    return float(weightedtau(x, y)[0])


STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": pearson,
    "weighted_tau": weighted_tau,
}


def correlation_draws(
    predictor: Sequence[float],
    correct: Sequence[np.ndarray],
    statistic: str = "pearson",
    rescore: Callable[[np.random.Generator], Sequence[float]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """(the statistic on the data, its value on every bootstrap resample): see
    correlation_interval."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: choose one of {list(STATISTICS)}.")
    if len(predictor) != len(correct) or len(correct) < 3:
        raise ValueError(f"{len(predictor)} predictor values for {len(correct)} cells (need >= 3)")
    function, transform = STATISTICS[statistic], transform or (lambda a: a)
    cells = _as_cells(correct)
    accuracy = transform(np.array([c.mean() for c in cells]))
    drawn = transform(resampled_accuracies(cells, resamples, seed))
    rng = np.random.default_rng(seed + 1)
    x = np.asarray(predictor, dtype=float)
    values = np.array(
        [function(np.asarray(rescore(rng), dtype=float) if rescore else x, row) for row in drawn]
    )
    return function(x, accuracy), values


def correlation_interval(
    predictor: Sequence[float],
    correct: Sequence[np.ndarray],
    statistic: str = "pearson",
    rescore: Callable[[np.random.Generator], Sequence[float]] | None = None,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Interval:
    """Correlation across a fixed set of backbones between `predictor` (ImageNet top-1, or a
    transferability score; one value per backbone) and accuracy (`correct`: one cell per backbone,
    bool [seeds, images], the same test images for all); `transform` maps accuracies first (e.g.
    to log-odds, as Kornblith et al.).

    rescore(rng): the predictor recomputed on a resample of the scored training images, drawn with
    rng (e.g. one of the score_resamples of src.similarity); without it the predictor is fixed."""
    estimate, values = correlation_draws(
        predictor, correct, statistic, rescore, resamples, seed, transform
    )
    return percentile_interval(estimate, values, level)


def mean_correlation_interval(
    parts: Sequence[tuple[Sequence[float], Sequence[np.ndarray], Callable | None]],
    statistic: str = "weighted_tau",
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean over data sets of a per-data-set correlation (as the SFDA paper averages its
    weighted tau over data sets); parts: (predictor, correct, rescore) per data set, each
    resampled independently (their test images differ)."""
    estimates, draws = zip(
        *(
            correlation_draws(x, cells, statistic, rescore, resamples, seed + 7 * i)
            for i, (x, cells, rescore) in enumerate(parts)
        ),
        strict=True,
    )
    with np.errstate(all="ignore"):
        values = np.nanmean(np.vstack(draws), axis=0)
    return percentile_interval(float(np.nanmean(estimates)), values, level)


def pooled_correlation_interval(
    predictor: Sequence[float],
    parts: Sequence[Sequence[np.ndarray]],
    statistic: str = "pearson",
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Interval:
    """Correlation of `predictor` with each backbone's (transformed) accuracy averaged over data
    sets first (Kornblith et al.'s Figure 1: log-odds averaged over data sets); parts: per data
    set, one cell per backbone. Each data set's test images are resampled independently."""
    transform = transform or (lambda a: a)
    function, x = STATISTICS[statistic], np.asarray(predictor, dtype=float)
    mean = np.mean([transform(np.array([c.mean() for c in _as_cells(p)])) for p in parts], 0)
    drawn = np.mean(
        [transform(resampled_accuracies(p, resamples, seed + 7 * i)) for i, p in enumerate(parts)],
        axis=0,
    )
    return percentile_interval(
        function(x, mean), np.array([function(x, row) for row in drawn]), level
    )


VERDICTS = ("agree", "contradict", "inconclusive")


def verdict(
    interval: Interval, published: float, null: float | None = None, margin: float = 0.0
) -> str:
    """Our interval against a published value, with `margin` the difference that would not matter
    (e.g. 0.1 of a correlation: our r = 0.99 [0.98, 1.0] does not contradict a published 0.96).

    - contradict: the interval misses [published - margin, published + margin] entirely: at the
      interval's level our data are incompatible with the published value.
    - agree: the interval reaches that band and excludes `null`, the value meaning "no effect"
      (0 for a correlation or a difference): the data can tell the published effect from none,
      and side with it. Without a null, reaching the band is enough.
    - inconclusive: the interval reaches the band but also contains the null: too wide to tell
      the published effect from none (more test images, seeds or backbones would be needed).
    An interval that is not finite (no resample gave a value) is inconclusive."""
    if not (np.isfinite(interval.low) and np.isfinite(interval.high)):
        return "inconclusive"
    if interval.high < published - margin or interval.low > published + margin:
        return "contradict"
    if null is not None and interval.contains(null):
        return "inconclusive"
    return "agree"


def headline(
    what: str,
    interval: Interval,
    published: float,
    null: float | None,
    margin: float = 0.0,
    scale: float = 1.0,
) -> str:
    """'<what> = <estimate> [<low>, <high>] (95 % bootstrap; published <value>): **<verdict>**.'"""
    digits = 1 if scale == 100 else 3
    return (
        f"{what} = {interval.format(scale, digits)} (95 % bootstrap; published "
        f"{scale * published:.{digits}f}): **{verdict(interval, published, null, margin)}**."
    )
