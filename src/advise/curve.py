"""Learning curve acc(n) = a - b * n^(-c) (a: the accuracy more data tends to, c: how fast it
gets there), fitted by least squares to (training images, accuracy) points, every seed a point.

The uncertainty band propagates the fit's parameter covariance: parameters are drawn from the
normal it describes and the curve's central `level` quantiles taken at each n (so the band
widens away from the data, as an extrapolation should)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

DRAWS = 4000


def power_law(n, a, b, c):
    return a - b * np.power(n, -c)


@dataclass(frozen=True)
class Curve:
    params: np.ndarray  # a, b, c
    cov: np.ndarray  # their covariance (inf where the points cannot tell)
    n_points: int

    @property
    def a(self) -> float:
        return float(self.params[0])

    @property
    def b(self) -> float:
        return float(self.params[1])

    @property
    def c(self) -> float:
        return float(self.params[2])

    def stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0, None))

    def has_band(self) -> bool:
        return bool(np.all(np.isfinite(self.cov)))

    def __call__(self, n) -> np.ndarray:
        return power_law(np.asarray(n, dtype=float), *self.params)

    def draws(self, seed: int = 0) -> np.ndarray:
        """[DRAWS, 3] parameters from the fit's normal, kept where b, c > 0 (a rising curve)."""
        rng = np.random.default_rng(seed)
        samples = rng.multivariate_normal(self.params, self.cov, size=DRAWS, method="eigh")
        return samples[(samples[:, 1] > 0) & (samples[:, 2] > 0)]

    def band(self, n, level: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the curve at n: central `level` quantiles over parameter draws."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        if not self.has_band():
            return np.full(n.shape, np.nan), np.full(n.shape, np.nan)
        p = self.draws(seed)
        # An accuracy: draws past 1 (or below 0) are clipped, not extrapolated.
        values = np.clip(power_law(n[None, :], p[:, :1], p[:, 1:2], p[:, 2:3]), 0.0, 1.0)
        tail = (1 - level) / 2 * 100
        return np.percentile(values, tail, axis=0), np.percentile(values, 100 - tail, axis=0)

    def images_for(self, target: float, level: float = 0.9, seed: int = 0):
        """(n, low, high): training images the curve needs to reach `target` (inf where its
        asymptote a stays below it), with the interval over parameter draws."""
        n = needed(self.params[None, :], target)[0]
        if not self.has_band():
            return n, np.nan, np.nan
        spread = needed(self.draws(seed), target)
        tail = (1 - level) / 2
        # No interpolation: draws that never reach the target (inf) make the high end inf.
        low, high = np.quantile(spread, [tail, 1 - tail], method="inverted_cdf")
        return n, low, high


def needed(params: np.ndarray, target: float) -> np.ndarray:
    """n solving a - b n^-c = target, per parameter row; inf where a <= target."""
    a, b, c = params[:, 0], params[:, 1], params[:, 2]
    gap = a - target
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.where(gap > 0, np.power(b / np.where(gap > 0, gap, 1.0), 1 / c), np.inf)
    return n


def fit(n, acc) -> Curve:
    """Least squares over every point; needs at least 3 distinct n (3 parameters). With no more
    points than parameters the covariance is infinite: a curve, but no band."""
    from scipy.optimize import OptimizeWarning, curve_fit

    n, acc = np.asarray(n, dtype=float), np.asarray(acc, dtype=float)
    if len(np.unique(n)) < 3:
        raise ValueError(
            f"A learning curve needs points at 3 or more data sizes, got {len(np.unique(n))}."
        )
    spread = max(acc.max() - acc.min(), 1e-3)
    start = (min(acc.max() + spread / 2, 1.0), spread * np.sqrt(n.min()), 0.5)
    bounds = ([0.0, 0.0, 1e-3], [1.0, np.inf, 5.0])  # an accuracy: a in [0, 1]; rising: b, c > 0
    if len(n) <= 3:  # an exact fit: nothing left to estimate the noise from (scipy warns so)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(power_law, n, acc, p0=start, bounds=bounds, maxfev=20000)
        return Curve(params, np.full((3, 3), np.inf), len(n))
    params, cov = curve_fit(power_law, n, acc, p0=start, bounds=bounds, maxfev=20000)
    return Curve(params, cov, len(n))
