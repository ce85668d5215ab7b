"""Transferability of a backbone to a labelled target, from its frozen features (and, for LEEP and
NCE, its own source-task head) alone: higher means "expected to transfer better". All take numpy
arrays: features [n, d], labels [n] in 0..C-1, source posteriors [n, Z]."""

from __future__ import annotations

import numpy as np


def logme(
    features: np.ndarray, labels: np.ndarray, tol: float = 1e-6, max_iter: int = 1000
) -> float:
    """LogME (You et al., ICML 2021): the log evidence per sample of a Bayesian linear regression
    from features to each one-hot label column, maximised over the prior precision alpha and the
    noise precision beta by the paper's fixed-point iteration, averaged over classes.

    F^T F = V diag(s) V^T is decomposed once; in that basis each iteration is O(d), so it runs to
    a tight tolerance. Invariant to the features' scale (alpha absorbs it) at the fixed point.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    # d - rank eigenvalues are 0 (A = alpha I there); rounding leaves them at ~1e-12 of the top
    # one, and F^T y, which has no component in that null space, with rounding noise there. As
    # beta grows (labels almost fitted: more dimensions than distinct images, e.g. a bootstrap
    # resample's duplicates) that noise / s blew the weights up to inf and LogME to NaN.
    null = s <= s.max() * max(n, d) * np.finfo(np.float64).eps
    s = np.where(null, 0.0, s)
    evidences = []
    for c in range(int(labels.max()) + 1):
        y = (labels == c).astype(np.float64)
        z = np.where(null, 0.0, v.T @ (f.T @ y))  # F^T y in the eigenbasis
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            gamma = np.sum(beta * s / (alpha + beta * s))
            m = beta * z / (alpha + beta * s)  # posterior mean of the weights, eigenbasis
            mm = m @ m
            residual = max(y @ y - 2.0 * (m @ z) + m @ (s * m), 1e-12)  # ||F m - y||^2
            alpha_new, beta_new = gamma / max(mm, 1e-12), (n - gamma) / residual
            converged = abs(alpha_new / beta_new - alpha / beta) <= tol * alpha / beta
            alpha, beta = alpha_new, beta_new
            if converged:
                break
        m = beta * z / (alpha + beta * s)
        mm, residual = m @ m, max(y @ y - 2.0 * (m @ z) + m @ (s * m), 1e-12)
        evidence = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * residual
            - alpha / 2 * mm
            - 0.5 * np.sum(np.log(alpha + beta * s))
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _joint(source: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical joint P(y, z) [C, Z] from per-sample distributions over source classes z."""
    joint = np.zeros((num_classes, source.shape[1]))
    np.add.at(joint, labels, source)
    return joint / len(labels)


def _expected_empirical_prediction(source_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image, the probability of its own label under sum_z P(y|z) theta(x)_z [n]."""
    probs = np.asarray(source_probs, dtype=np.float64)
    joint = _joint(probs, labels, int(labels.max()) + 1)
    conditional = joint / np.clip(joint.sum(axis=0, keepdims=True), 1e-300, None)  # P(y | z)
    predicted = probs @ conditional.T  # [n, C]
    return predicted[np.arange(len(labels)), labels]


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al., ICML 2020): mean log-likelihood of the target labels under the
    "expected empirical predictor" sum_z P(y|z) theta(x)_z, with theta the source head's softmax."""
    return float(np.mean(np.log(_expected_empirical_prediction(source_probs, labels))))


def nce(source_labels: np.ndarray, labels: np.ndarray, num_source: int | None = None) -> float:
    """NCE (Tran et al., ICCV 2019): -H(Y | Z), Z the source model's hard labels. <= 0; 0 when the
    source labels determine the target labels."""
    num_source = num_source or int(source_labels.max()) + 1
    joint = _joint(np.eye(num_source)[source_labels], labels, int(labels.max()) + 1)
    p_z = joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log((joint / np.clip(p_z, 1e-300, None))[nonzero])))


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f|y])).

    With fewer images than feature dimensions the paper's pseudo-inverse makes it exactly C - 1
    whatever the features; shrinkage=True uses the Ledoit-Wolf covariance instead (the regularised
    H-score of Ibrahim et al. 2022), shrinkage=False the paper's pseudo-inverse."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0)
    class_means = np.zeros((int(labels.max()) + 1, f.shape[1]))
    np.add.at(class_means, labels, f)
    class_means /= np.clip(np.bincount(labels, minlength=len(class_means)), 1, None)[:, None]
    g = class_means[labels]
    cov_g = g.T @ g / len(g)
    if shrinkage:
        from sklearn.covariance import ledoit_wolf

        return float(np.trace(np.linalg.solve(ledoit_wolf(f, assume_centered=True)[0], cov_g)))
    return float(np.trace(np.linalg.pinv(f.T @ f / len(f), hermitian=True) @ cov_g))


def knn_accuracy(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], k: int
) -> float:
    """kNN (cosine) accuracy on held-out labelled images, from the same frozen features."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train[1])), metric="cosine").fit(*train)
    return float(knn.score(*val))


def linear_accuracy(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], seed: int
) -> float:
    """Logistic-regression accuracy on held-out labelled images, from the same frozen features."""
    from src.pipelines.features import sklearn_classifier

    linear = sklearn_classifier("logistic", C=1.0, max_iter=1000, seed=seed).fit(*train)
    return float(linear.score(*val))


def probe_accuracy(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], k: int, seed: int
) -> dict[str, float]:
    """The baseline the scores are meant to predict cheaply: kNN (cosine) and logistic-regression
    accuracy on held-out labelled images, from the same frozen features."""
    return {"knn_acc": knn_accuracy(train, val, k), "linear_acc": linear_accuracy(train, val, seed)}
