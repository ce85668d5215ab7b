"""strategy=feature_extract: the policy (which classifier, its C grid, where features are cached).
What it runs is the fixed-feature pipeline, src/pipelines/fixed_features.py."""

from __future__ import annotations

from collections.abc import Sequence

from src.strategies.base import Strategy
from src.strategies.groups import HEAD


class FeatureExtract(Strategy):
    """Frozen features into a new classifier: the backbone runs once per split, its pooled features
    are cached on disk (src/pipelines/features.py), and `classifier` trains on them:
    `logistic`, `linear_svm`, `svm` (RBF) from scikit-learn, or `linear` (a torch layer trained by
    Lightning with the run's optimizer, schedule and epochs). Training images are not augmented."""

    CLASSIFIERS = ("logistic", "linear_svm", "svm", "linear")
    pipeline = (
        "src.pipelines.fixed_features.FixedFeaturePipeline"  # features once, a classifier on them
    )

    def __init__(
        self,
        classifier: str = "logistic",
        C: float | list[float] = 1.0,
        max_iter: int = 2000,
        cache_dir: str = "cache/features",
        bn: str = "train",
    ):
        super().__init__(bn)
        if classifier not in self.CLASSIFIERS:
            raise ValueError(
                f"strategy.classifier='{classifier}': choose one of {self.CLASSIFIERS}."
            )
        grid = list(C) if isinstance(C, Sequence) and not isinstance(C, str) else [C]
        if not grid or any(
            isinstance(c, bool) or not isinstance(c, int | float) or c <= 0 for c in grid
        ):
            raise ValueError(f"strategy.C={C}: must be > 0, or a non-empty list of such values.")
        if len(grid) > 1 and classifier == "linear":
            raise ValueError(
                "strategy.C as a list picks a scikit-learn classifier's C; not for linear."
            )
        self.classifier, self.max_iter, self.cache_dir = classifier, max_iter, cache_dir
        self.C = sorted(
            grid
        )  # ascending: on a validation tie the smaller C (more regularised) wins

    def trainable(self, group: str, epoch: int) -> bool:
        return group == HEAD

    def check(self, max_epochs: int, regularisation=None) -> None:
        if regularisation is not None and regularisation.trains_by_gradient:
            raise ValueError(
                "strategy=feature_extract trains a classifier on cached, frozen features: mixup/cutmix, "
                "L2-SP and BSS cannot act there. Use regularisation=none, light or default, or a "
                "fine-tuning strategy."
            )
