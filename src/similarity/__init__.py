"""Choosing the pretrained model before training: transferability scores of a backbone for a
labelled target (LogME, LEEP, NCE, H-score, NLEEP, PARC, SFDA, kNN / linear-probe accuracy), domain similarity of
two data sets in its feature space (Cui et al.'s EMD similarity, Frechet distance, RBF MMD),
MLflow runs that hold them, and how well they predicted the accuracy training reached.

CLI: `python -m src.similarity` (conf/similarity.yaml); report: `python -m src.similarity.report`.
"""

from src.similarity.domain import cui_similarity, emd, frechet_distance, mmd_rbf
from src.similarity.feature_estimators import nleep, parc, sfda
from src.similarity.transferability import hscore, leep, logme, nce, probe_accuracy

__all__ = [
    "cui_similarity",
    "emd",
    "frechet_distance",
    "hscore",
    "leep",
    "logme",
    "mmd_rbf",
    "nce",
    "nleep",
    "parc",
    "probe_accuracy",
    "sfda",
]
