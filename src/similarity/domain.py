"""Domain similarity between two labelled data sets in one backbone's feature space.

Cui et al. (CVPR 2018): each data set is the set of its class-mean features, weighted by class
frequency; the earth mover's distance between the two sets (ground cost: Euclidean distance) gives
similarity exp(-gamma * EMD), gamma = 0.01 as in the paper. POT solves the transport exactly.
Also: the Frechet distance between the two feature Gaussians, and the RBF-kernel MMD^2.
"""

from __future__ import annotations

import numpy as np

CUI_GAMMA = 0.01


def class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class-mean features [C, d], class weights [C] summing to 1) over the classes present."""
    classes, counts = np.unique(labels, return_counts=True)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    return means.astype(np.float64), counts / counts.sum()


def emd(source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray]) -> float:
    """Earth mover's distance between the class-mean sets of (features, labels) pairs."""
    import ot
    from scipy.spatial.distance import cdist

    (xs, ws), (xt, wt) = class_means(*source), class_means(*target)
    cost = cdist(xs, xt)  # direct differences: exactly 0 between equal means
    return float(ot.emd2(ws, wt, cost))


def cui_similarity(distance: float, gamma: float = CUI_GAMMA) -> float:
    return float(np.exp(-gamma * distance))


def frechet_distance(source: np.ndarray, target: np.ndarray) -> float:
    """||mu_s - mu_t||^2 + tr(S_s + S_t - 2 (S_s S_t)^1/2) (as FID), via the symmetric form
    tr((S_s^1/2 S_t S_s^1/2)^1/2), which stays real for singular covariances."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    cov_s = np.cov(source, rowvar=False).astype(np.float64)
    cov_t = np.cov(target, rowvar=False).astype(np.float64)
    values, vectors = np.linalg.eigh(cov_s)
    root_s = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_s @ cov_t @ root_s)
    trace_root = np.sum(np.sqrt(np.clip(cross, 0, None)))
    value = np.sum((mu_s - mu_t) ** 2) + np.trace(cov_s) + np.trace(cov_t) - 2 * trace_root
    return float(max(value, 0.0))


def mmd_rbf(
    source: np.ndarray, target: np.ndarray, max_samples: int = 1000, seed: int = 0
) -> float:
    """Biased MMD^2 with a Gaussian kernel, bandwidth by the median heuristic on the pooled sample
    (so it does not depend on the features' scale); at most max_samples rows of each side."""
    rng = np.random.default_rng(seed)
    xs = _rows(source, max_samples, rng).astype(np.float64)
    xt = _rows(target, max_samples, rng).astype(np.float64)
    pooled = np.concatenate([xs, xt])
    sq = _sq_dists(pooled, pooled)
    bandwidth = np.median(sq[np.triu_indices(len(pooled), k=1)])
    kernel = np.exp(-sq / max(bandwidth, 1e-12))
    n = len(xs)
    value = kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
    return float(max(value, 0.0))


def _rows(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= limit else x[rng.choice(len(x), limit, replace=False)]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.clip(sq, 0, None)


def domain_scores(
    source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray], seed: int
) -> dict[str, float]:
    """Every domain measure between two (features, labels) sets."""
    distance = emd(source, target)
    return {
        "emd": distance,
        "domain_similarity": cui_similarity(distance),
        "frechet": frechet_distance(source[0], target[0]),
        "mmd": mmd_rbf(source[0], target[0], seed=seed),
    }
