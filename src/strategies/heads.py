"""feature_extract's scikit-learn classifiers as exact torch modules, so a run's checkpoint is the
whole model (backbone + head) that eval, predict and every export format load with weights_only.

- Logistic regression and linear SVM: StandardScaler + a linear decision function is one affine
  map, folded into the backbone's own classifier (an nn.Linear): its outputs are scikit-learn's
  decision values, so the task's softmax (sigmoid per label) gives predict_proba back.
- RBF SVM: `KernelSVM`, scikit-learn's SVC decision function (one-vs-one pairs turned into
  one-vs-rest scores exactly as `decision_function_shape="ovr"` does), in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of timm's classifier (get_classifier), e.g. ("classifier.",)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return tuple(f"{name}." for name, module in model.named_modules() if name and module is head)


# Log-odds standing in for a label that was constant in training (0 or 1 with probability 1).
CONSTANT_LOGIT = float(np.log(1e6))


def is_probabilistic(kind: str) -> bool:
    """Whether the classifier's scores are probabilities after a softmax / sigmoid: SVM margins
    are not, so their runs log no loss or calibration error."""
    return kind in ("logistic", "linear")


def affine(pipeline, num_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight [outputs, features], bias) with weight @ x + bias = the pipeline's decision values
    on raw features x (a binary classifier: class 0 at 0, class 1 at its margin)."""
    scaler, model = pipeline[0], pipeline[-1]
    if hasattr(model, "estimators_"):  # one-vs-rest, one binary classifier per label
        rows = [_binary_affine(e) for e in model.estimators_]
        weight, bias = np.stack([w for w, _ in rows]), np.array([b for _, b in rows])
    elif model.coef_.shape[0] == 1 and num_outputs == 2:
        weight = np.vstack([np.zeros_like(model.coef_), model.coef_])
        bias = np.array([0.0, model.intercept_[0]])
    else:
        weight, bias = model.coef_, model.intercept_
    weight = weight.astype(np.float64) / scaler.scale_  # (x - mean) / scale folded in
    return weight, bias.astype(np.float64) - weight @ scaler.mean_


def _binary_affine(estimator) -> tuple[np.ndarray, float]:
    if hasattr(estimator, "coef_"):
        return estimator.coef_[0], float(estimator.intercept_[0])
    # scikit-learn's _ConstantPredictor: the label never (or always) occurred in training
    return np.zeros(estimator.n_features_in_), CONSTANT_LOGIT * (2 * float(estimator.y_[0]) - 1)


def install_linear(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """The backbone's own classifier (timm's get_classifier, an nn.Linear) takes these values."""
    classifier = model.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)


def replace_classifier(model: nn.Module, head: nn.Module) -> None:
    """Put `head` where timm's classifier is (classifier, fc, head, head.fc ...)."""
    (prefix,) = classifier_prefixes(model)
    *parents, name = prefix.rstrip(".").split(".")
    parent = model.get_submodule(".".join(parents)) if parents else model
    setattr(parent, name, head)


class KernelSVM(nn.Module):
    """scikit-learn's SVC(kernel="rbf") decision function on raw features, standardisation
    included. mode: ovo (multi-class: pairwise margins -> one-vs-rest votes + confidences),
    binary (class 0 at 0, class 1 at the margin) or multilabel (one margin per label)."""

    def __init__(self, dimensions: dict):
        super().__init__()
        # Plain ints and a string (support vectors, features, pairs, classes, mode): stored in the
        # checkpoint as they are.
        self.dimensions = dict(dimensions)
        s, d, p, c = (dimensions[k] for k in ("support", "features", "pairs", "classes"))
        self.mode = dimensions["mode"]
        for name, size in {
            "mean": (d,),
            "scale": (d,),
            "support_vectors": (s, d),
            "coef": (p, s),
            "intercept": (p,),
            "gamma": (),
            "first": (p, c),  # pair k = (i, j): one-hot of i ...
            "second": (p, c),  # ... and of j
        }.items():
            self.register_buffer(name, torch.zeros(size, dtype=torch.float64))

    def get_classifier(self) -> nn.Module:  # timm's contract, for the parameter groups
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.scale
        sq = (
            (x * x).sum(1, keepdim=True)
            + (self.support_vectors**2).sum(1)
            - 2 * x @ self.support_vectors.T
        )
        margins = torch.exp(-self.gamma * sq.clamp_min(0)) @ self.coef.T + self.intercept
        if self.mode == "ovo":  # sklearn.utils.multiclass._ovr_decision_function
            votes = (margins >= 0).double() @ self.first + (margins < 0).double() @ self.second
            confidence = margins @ (self.first - self.second)
            margins = votes + confidence / (3 * (confidence.abs() + 1))
        elif self.mode == "binary":
            margins = torch.cat([torch.zeros_like(margins), margins], dim=1)
        return margins.float()

    @classmethod
    def from_fitted(cls, pipeline, num_classes: int) -> KernelSVM:
        scaler, model = pipeline[0], pipeline[-1]
        estimators = getattr(model, "estimators_", None)
        if estimators is not None:  # multi-label: each label's SVC, side by side
            parts = [_binary_parts(e, scaler.n_features_in_) for e in estimators]
            support = np.vstack([sv for sv, _, _, _ in parts])
            coef = np.zeros((len(parts), len(support)))
            start = 0
            for label, (sv, dual, _, _) in enumerate(parts):
                coef[label, start : start + len(sv)] = dual
                start += len(sv)
            intercept = np.array([b for _, _, b, _ in parts])
            gamma = next((g for _, _, _, g in parts if g is not None), 1.0)
            mode, pairs = "multilabel", []
        elif num_classes == 2:
            support, coef = model.support_vectors_, model.dual_coef_
            # _gamma: the value fit used; the public `gamma` may be the rule ("scale"), not a number.
            intercept, gamma, mode, pairs = model.intercept_, model._gamma, "binary", []
        else:
            support, coef, pairs = model.support_vectors_, *_pairwise(model)
            intercept, gamma, mode = model.intercept_, model._gamma, "ovo"
        dimensions = {
            "support": len(support),
            "features": scaler.n_features_in_,
            "pairs": len(coef),
            "classes": num_classes,
            "mode": mode,
        }
        head = cls(dimensions)
        values = {
            "mean": scaler.mean_,
            "scale": scaler.scale_,
            "support_vectors": support,
            "coef": coef,
            "intercept": intercept,
            "gamma": np.asarray(gamma),
        }
        for name, value in values.items():
            getattr(head, name).copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)))
        for k, (i, j) in enumerate(pairs):
            head.first[k, i], head.second[k, j] = 1.0, 1.0
        return head


def _pairwise(model) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """libsvm's dual coefficients as one row per class pair (i < j) over all support vectors:
    the vectors of class i weigh dual_coef_[j - 1], those of class j weigh dual_coef_[i]."""
    starts = np.concatenate([[0], np.cumsum(model.n_support_)])
    pairs = [(i, j) for i in range(len(starts) - 1) for j in range(i + 1, len(starts) - 1)]
    coef = np.zeros((len(pairs), len(model.support_vectors_)))
    for k, (i, j) in enumerate(pairs):
        coef[k, starts[i] : starts[i + 1]] = model.dual_coef_[j - 1, starts[i] : starts[i + 1]]
        coef[k, starts[j] : starts[j + 1]] = model.dual_coef_[i, starts[j] : starts[j + 1]]
    return coef, pairs


def _binary_parts(estimator, num_features: int):
    """(support vectors, dual coefficients, intercept, gamma) of one label's binary SVC."""
    if hasattr(estimator, "support_vectors_"):
        return (
            estimator.support_vectors_,
            estimator.dual_coef_[0],
            float(estimator.intercept_[0]),
            estimator._gamma,
        )
    constant = CONSTANT_LOGIT * (2 * float(estimator.y_[0]) - 1)  # a label constant in training
    return np.zeros((0, num_features)), np.zeros(0), constant, None


def head_record(kind: str, head: nn.Module) -> dict:
    """What the checkpoint says about its head, in plain types (weights_only loads it)."""
    record = {"classifier": kind, "probabilistic": is_probabilistic(kind)}
    if isinstance(head, KernelSVM):
        record["kernel_svm"] = dict(head.dimensions)
    return record
