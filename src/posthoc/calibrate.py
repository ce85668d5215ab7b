"""Temperature scaling (Guo et al., ICML 2017): one scalar T > 0 fitted on the validation split by
minimising the NLL of softmax(logits / T) with LBFGS. T is folded into the classifier (W/T, b/T),
so the new run's logits are the calibrated ones wherever it is used (eval, predict, export); the
accuracy is unchanged (argmax), ECE and NLL before and after are logged."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import InvalidInput
from src.posthoc.scoring import accuracy, ece, nll, split_logits
from src.posthoc.sources import Outcome, Source

log = logging.getLogger(__name__)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """argmin_T NLL(logits / T), over log T so T stays positive; T = 1 if nothing lowers the NLL."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or nll(logits / temperature, labels) > nll(logits, labels):
        return 1.0
    return temperature


def check_fittable(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuses a validation split the model classifies all right (or all wrong): its NLL then falls
    for ever as T -> 0 (or T -> inf), so the "fitted" T is wherever the optimiser stopped, and the
    calibrated model would claim probability 1 (or 1/K) for everything."""
    right = int((logits.argmax(1) == labels).sum())
    if right in (0, len(labels)):
        which = "every one right" if right else "every one wrong"
        raise InvalidInput(
            f"method=calibrate: the model classifies the {len(labels)} validation images "
            f"{which}, so the validation NLL has no minimum over T and temperature scaling has "
            "nothing to fit; it needs both right and wrong validation predictions: a larger "
            "validation split (dataset.val_fraction, dataset.samples_per_class) gives it some."
        )


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """A copy whose linear classifier is divided by T: its logits are the model's / T."""
    scaled = copy.deepcopy(model)
    head = scaled.get_classifier() if hasattr(scaled, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise InvalidInput(
            f"temperature scaling folds T into a linear classifier; this model's is "
            f"{type(head).__name__}."
        )
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    return scaled


class Calibrate:
    """`python -m src.posthoc method=calibrate run_id=<id>`: a calibrated copy of a run."""

    kind = "calibrated"

    def __init__(self, max_iter: int = 100, bins: int = 15):
        self.max_iter, self.bins = max_iter, bins

    def check(self, sources: list[Source]) -> None:
        if len(sources) != 1:
            raise InvalidInput(f"method=calibrate takes one run_id, got {len(sources)}.")
        if (
            isinstance(self.max_iter, bool)
            or not isinstance(self.max_iter, int)
            or self.max_iter < 1
        ):
            raise InvalidInput(f"method.max_iter={self.max_iter}: an integer >= 1.")
        fold_temperature(sources[0].model, 1.0)  # a linear head, before any data is read

    def apply(self, sources: list[Source], datamodule, output_dir: Path) -> Outcome:
        (source,) = sources
        logits, labels = split_logits(source.model, datamodule, "val")
        check_fittable(logits, labels)
        temperature = fit_temperature(logits, labels, self.max_iter)
        model = fold_temperature(source.model, temperature)
        metrics = {"temperature": temperature}
        metrics |= calibration_metrics("val", logits, labels, temperature)
        test_logits, test_labels = split_logits(source.model, datamodule, "test")
        metrics |= calibration_metrics("test", test_logits, test_labels, temperature)
        log.info(
            "T = %.4f: val NLL %.4f -> %.4f, val ECE %.4f -> %.4f",
            temperature,
            metrics["val/nll_uncalibrated"],
            metrics["val/nll"],
            metrics["val/ece_uncalibrated"],
            metrics["val/ece"],
        )
        figure = output_dir / "reliability_val.png"
        plot_reliability(logits, labels, temperature, figure, self.bins)
        params = {"method": "temperature_scaling", "temperature": temperature, "fit_split": "val"}
        series = reliability_series(logits, labels, temperature, self.bins)
        # A temperature never changes the argmax: the source's own test predictions.
        predictions = (test_labels.numpy(), test_logits.argmax(1).numpy())
        return Outcome(
            model, params, metrics, [figure], series=series, test_predictions=predictions
        )


def calibration_metrics(
    split: str, logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> dict[str, float]:
    """<split>/{acc,nll,ece} after scaling, and nll, ece before as <metric>_uncalibrated."""
    scaled = logits / temperature
    return {
        f"{split}/acc": accuracy(scaled, labels),
        f"{split}/nll": nll(scaled, labels),
        f"{split}/ece": ece(scaled, labels),
        f"{split}/nll_uncalibrated": nll(logits, labels),
        f"{split}/ece_uncalibrated": ece(logits, labels),
    }


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int):
    """Per equal-width confidence bin: (mean confidence, accuracy, count)."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    index = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).float()
    mean_conf = torch.bincount(index, confidence, minlength=bins) / count.clamp(min=1)
    acc = torch.bincount(index, correct, minlength=bins) / count.clamp(min=1)
    return mean_conf, acc, count


def reliability_series(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, bins: int
) -> dict[str, list[tuple[int, float]]]:
    """The validation reliability diagram as metrics, step = bin (empty bins left out), before
    (_uncalibrated) and after: what src.report's `reliability` plot draws."""
    series = {}
    for suffix, t in (("", temperature), ("_uncalibrated", 1.0)):
        confidence, acc, count = reliability((logits / t).softmax(1), labels, bins)
        filled = [b for b in range(bins) if count[b] > 0]
        series[f"calibration/val_confidence{suffix}"] = [(b, float(confidence[b])) for b in filled]
        series[f"calibration/val_accuracy{suffix}"] = [(b, float(acc[b])) for b in filled]
    return series


def plot_reliability(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, path: Path, bins: int = 15
) -> Path:
    """Reliability diagram, before and after: accuracy per confidence bin against the diagonal."""
    from src.tracking.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    centres = (torch.arange(bins) + 0.5) / bins
    for ax, (title, t) in zip(
        axes, [("before", 1.0), (f"after (T = {temperature:.2f})", temperature)], strict=True
    ):
        scaled = logits / t
        _, acc, count = reliability(scaled.softmax(1), labels, bins)
        shown = count > 0
        ax.bar(centres[shown], acc[shown], width=1 / bins, edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            title=f"{title}: ECE {ece(scaled, labels):.3f}",
        )
    axes[0].set_ylabel("accuracy")
    return _save(fig, path)
