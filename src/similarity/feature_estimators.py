"""Transferability from frozen features alone, the three estimators after LogME: NLEEP (Li et al.,
CVPR 2021), PARC (Bolya et al., NeurIPS 2021) and SFDA (Shao et al., ECCV 2022). Higher means
"expected to transfer better". Each matches the authors' public code (TencentARC/SFDA,
`metrics.py`) on fixed arrays; tests/similarity/test_similarity.py holds the reference values."""

from __future__ import annotations

import logging

import numpy as np

from src.similarity.transferability import _expected_empirical_prediction

logger = logging.getLogger(__name__)


def nleep(
    features: np.ndarray,
    labels: np.ndarray,
    components_per_class: int = 5,
    variance: float = 0.8,
    seed: int = 0,
    log: bool = True,
) -> float:
    """NLEEP: LEEP with the source head replaced by a Gaussian mixture (components_per_class x C
    components) fitted on the PCA of the features that keeps `variance` of their variance.

    log=True is the paper's mean log-likelihood, like `leep`; log=False the mean likelihood, which
    is what the authors' code returns, so what the SFDA paper's published tau measured. The mixture
    is seeded (k-means initialisation): `seed` gives the same mixture as their code after
    np.random.seed(seed)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    reduced = PCA(n_components=variance).fit_transform(np.asarray(features, dtype=np.float64))
    components = components_per_class * (int(labels.max()) + 1)
    if components > len(reduced):  # a mixture needs an image per component: adapt, and say so
        logger.warning(
            "NLEEP: %d components (%d per class) for %d images; fitting %d instead (a small "
            "sample: the score is less comparable with the paper's).",
            components,
            components_per_class,
            len(reduced),
            len(reduced),
        )
        components = len(reduced)
    mixture = GaussianMixture(n_components=components, random_state=seed).fit(reduced)
    predicted = _expected_empirical_prediction(mixture.predict_proba(reduced), labels)
    return float(np.mean(np.log(predicted)) if log else np.mean(predicted))


def parc(
    features: np.ndarray,
    labels: np.ndarray,
    dims: int = 32,
    max_images: int | None = 5000,
    seed: int = 1919,
) -> float:
    """PARC: 100 x the Spearman correlation between two image-by-image dissimilarity matrices
    (1 - Pearson r of two images' vectors): of the standardised features reduced to `dims` by PCA,
    and of the one-hot labels. The PCA is the reference code's (randomised, one power iteration,
    seed 1919). The matrices are n x n: above max_images a seeded random subset is scored."""
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    f = np.asarray(features, dtype=np.float64)
    if max_images is not None and len(f) > max_images:
        keep = np.random.default_rng(seed).choice(len(f), max_images, replace=False)
        f, labels = f[keep], labels[keep]
    dims = min(dims, *f.shape)
    if dims < f.shape[1]:
        pca = PCA(dims, svd_solver="randomized", random_state=seed, iterated_power=1)
        f = pca.fit_transform(f)
    upper = np.triu_indices(len(f), 1)
    feature_rdm = 1 - np.corrcoef(StandardScaler().fit_transform(f))[upper]
    label_rdm = 1 - np.corrcoef(np.eye(int(labels.max()) + 1)[labels])[upper]
    return float(spearmanr(feature_rdm, label_rdm)[0] * 100)


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    return np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)


def _shrunk(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """(1 - s) cov + s mean(diag cov) I: shrunk towards a sphere of the same total variance."""
    return (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))


def _fisher_posterior(f: np.ndarray, labels: np.ndarray, shrinkage: float | None):
    """Class posteriors of the regularised Fisher discriminant, and the shrinkage used.

    The within-class scatter S_w (class covariances weighted by the class priors) is shrunk by
    exp(-5 x its largest eigenvalue) unless `shrinkage` is given. Keeping every discriminant
    direction V (generalised eigenvectors, V^T S_w V = I) makes the projection V V^T = S_w^-1, so
    the posterior is that of linear discriminant analysis with the shrunk S_w."""
    classes = int(labels.max()) + 1
    priors = np.bincount(labels, minlength=classes) / len(labels)
    means = np.stack([f[labels == c].mean(axis=0) for c in range(classes)])
    within = sum(p * np.cov(f[labels == c].T, bias=True) for c, p in enumerate(priors))
    if shrinkage is None:
        shrinkage = max(np.exp(-5 * np.linalg.eigvalsh(within)[-1]), 1e-10)
    coef = np.linalg.solve(_shrunk(within, shrinkage), means.T).T  # means S_w^-1  [C, d]
    intercept = -0.5 * np.sum(means * coef, axis=1) + np.log(priors)
    return _softmax(f @ coef.T + intercept), means, shrinkage


def sfda(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA: the mean probability of the true class under a regularised Fisher discriminant fitted
    after "confidence mix": each image moves towards the mean of the other classes' means by
    1 - its confidence in its own class (the softmax of the first discriminant's posteriors, which
    softens them, as the authors' code does). No log, as in the paper (for stability)."""
    f = np.asarray(features, dtype=np.float64)
    n, classes = len(labels), int(labels.max()) + 1
    posterior, means, shrinkage = _fisher_posterior(f, labels, None)
    confidence = _softmax(posterior)[np.arange(n), labels][:, None]
    others = (means.sum(axis=0) - means) / (classes - 1)  # [C, d]
    mixed = confidence * f + (1 - confidence) * others[labels]
    posterior, _, _ = _fisher_posterior(mixed, labels, shrinkage)
    return float(np.mean(posterior[np.arange(n), labels]))
