"""WiSE-FT (Wortsman et al., CVPR 2022): the weights (1 - alpha) * theta_0 + alpha * theta_ft
between a fine-tuned run and its starting point, alpha chosen on validation over a grid, the
chosen model tested once. The starting point is the pretrained backbone with a linear probe:
another run's (method.start_run_id: a linear_probe or feature_extract run of the same
architecture) or one fitted here (logistic regression on the pretrained features of the
fine-tuned run's training split)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.errors import InvalidInput
from src.posthoc.scoring import accuracy, ece, nll, split_logits
from src.posthoc.sources import Outcome, Source, check_same_architecture, load_sources
from src.posthoc.weights import average, with_weights

log = logging.getLogger(__name__)

GRID = [round(0.1 * i, 1) for i in range(11)]


class WiseFT:
    """`python -m src.posthoc method=wise_ft run_id=<fine-tuned run>`."""

    kind = "wise_ft"

    def __init__(
        self,
        alphas=tuple(GRID),
        start_run_id: str | None = None,
        C: float = 1.0,
        max_iter: int = 1000,
    ):
        self.alphas = [float(a) for a in alphas]
        self.start_run_id, self.C, self.max_iter = start_run_id, C, max_iter
        self.start: Source | None = None
        self.pretrained: nn.Module | None = None  # the fitted probe's backbone

    def check(self, sources: list[Source]) -> None:
        """One fine-tuned run, alphas in [0, 1], and a starting point (checked, loaded)."""
        if len(sources) != 1:
            raise InvalidInput(f"method=wise_ft takes one fine-tuned run_id, got {len(sources)}.")
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if not self.alphas or bad:
            raise InvalidInput(
                f"method.alphas={self.alphas}: a non-empty list of values in [0, 1]."
            )
        if isinstance(self.C, bool) or not isinstance(self.C, int | float) or self.C <= 0:
            raise InvalidInput(f"method.C={self.C}: the probe's inverse regularisation, > 0.")
        (source,) = sources
        if self.start_run_id:
            (self.start,) = load_sources([self.start_run_id], source.trained.tracking_uri, "best")
            check_same_architecture([source, self.start])
        elif not source.trained.config["backbone"].get("pretrained", True):
            raise InvalidInput(
                f"run_id={source.run_id} was trained from random weights (backbone.pretrained="
                "false): it has no pretrained starting point. Give method.start_run_id=<a probe "
                "run of the same architecture>."
            )
        else:  # the pretrained weights, now: unavailable offline is refused before any work
            self.pretrained = pretrained_backbone(source)

    def apply(self, sources: list[Source], datamodule, output_dir: Path) -> Outcome:
        (source,) = sources
        start = (
            self.start.model
            if self.start
            else fit_probe(self.pretrained, source, datamodule, self.C, self.max_iter)
        )
        theta_0, theta_ft = start.state_dict(), source.model.state_dict()
        curve, labels = {}, None
        for alpha in self.alphas:  # 2. every alpha on validation
            model = with_weights(source.model, interpolate(theta_0, theta_ft, alpha))
            logits, labels = split_logits(model, datamodule, "val")
            curve[alpha] = (accuracy(logits, labels), nll(logits, labels), ece(logits, labels))
            log.info("alpha %.2f: val acc %.4f, NLL %.4f", alpha, *curve[alpha][:2])
        best = max(self.alphas, key=lambda a: (curve[a][0], -curve[a][1]))  # acc, then NLL
        model = with_weights(source.model, interpolate(theta_0, theta_ft, best))
        metrics = {
            "alpha": best,
            "val/acc": curve[best][0],
            "val/nll": curve[best][1],
            "val/ece": curve[best][2],
        }
        tested, predictions = test_metrics(model, datamodule)  # 3. the chosen model, tested once
        metrics |= tested
        params = {
            "alphas": self.alphas,
            "alpha": best,
            "start": self.start.run_id if self.start else "linear_probe_fitted",
            "probe_C": self.C,
        }
        figure = plot_curve(curve, best, output_dir / "wise_ft_alpha.png")
        # Per alpha, step = 100 * alpha: the MLflow UI draws the validation curve.
        series = {
            f"wise_ft/val_{name}": [(round(100 * a), curve[a][i]) for a in self.alphas]
            for i, name in enumerate(("acc", "nll", "ece"))
        }
        return Outcome(
            model, params, metrics, [figure], series=series, test_predictions=predictions
        )


def interpolate(theta_0: dict, theta_ft: dict, alpha: float) -> dict:
    """(1 - alpha) * theta_0 + alpha * theta_ft; alpha 0 and 1 give the end points bit for bit."""
    return average([theta_0, theta_ft], [1.0 - alpha, alpha])


def pretrained_backbone(source: Source) -> nn.Module:
    """The run's backbone config built with its pretrained weights and a new head."""
    from omegaconf import OmegaConf

    from src.config import instantiate_node

    backbone = OmegaConf.create(source.trained.config["backbone"])
    return instantiate_node(backbone, num_classes=source.model.num_classes).eval()


def fit_probe(model: nn.Module, source: Source, datamodule, C: float, max_iter: int) -> nn.Module:
    """`model` (the pretrained backbone) with a logistic-regression head fitted on its pooled
    features of the training split (evaluation transform, no augmentation)."""
    from src.pipelines.features import sklearn_classifier
    from src.strategies.heads import affine

    features, labels = pooled_features(model, datamodule, "train")
    seed = int(source.trained.config.get("seed", 0))
    pipeline = sklearn_classifier("logistic", C, max_iter, seed).fit(features, labels)
    weight, bias = affine(pipeline, source.model.num_classes)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    log.info(
        "Linear probe on pretrained features: train acc %.4f", pipeline.score(features, labels)
    )
    return model


@torch.no_grad()
def pooled_features(model: nn.Module, datamodule, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for images, targets in datamodule.eval_batches(split, torch.device("cpu")):
        rows.append(model.forward_head(model.forward_features(images), pre_logits=True))
        labels.append(targets)
    return torch.cat(rows).double().numpy(), torch.cat(labels).numpy()


def test_metrics(model: nn.Module, datamodule) -> tuple[dict[str, float], tuple | None]:
    """(test/<metric>, (y_true, y_pred) per test image): the derived run's own test numbers."""
    from src.inference.evaluate import evaluate_per_image

    metrics, predictions = evaluate_per_image(model, datamodule, "test")
    return {f"test/{k}": v for k, v in metrics.items()}, predictions


def plot_curve(curve: dict, best: float, path: Path) -> Path:
    """Validation accuracy against alpha, the chosen alpha marked."""
    from src.tracking.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    alphas = sorted(curve)
    ax.plot(alphas, [curve[a][0] for a in alphas], "o-")
    ax.axvline(best, color="k", ls="--", lw=1, label=f"chosen alpha = {best:g}")
    ax.set(xlabel="alpha (0: pretrained + probe, 1: fine-tuned)", ylabel="validation accuracy")
    ax.legend()
    return _save(fig, path)
