"""Stage 4's numbers: the Advice (what every stage found), the accuracy over seeds, projections
from the curve, Kendall tau of the ranking against the trials, and the data-efficiency plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.advise.curve import Curve
from src.similarity.ranking import COLUMNS
from src.tracking.tables import markdown


@dataclass
class Advice:
    dataset: str
    budget: str
    parent_run: str
    ranking: list[dict]
    trials: list[dict]
    best: dict | None
    command: str | None
    winner: str | None  # the MLflow run id to use (predict, export, eval)
    data: list[dict]
    curve: Curve | None
    curve_note: str
    target_acc: float | None
    band: float
    elapsed: str
    skipped: list[str] = field(default_factory=list)
    # The shipped search trial's test accuracy, when no run on all the data fitted the budget
    # (that trial is then the model to use, scored on the test split once: Stages.test).
    trial_test_acc: float | None = None


def kendall(ranking: list[dict], trials: list[dict]) -> list[dict]:
    """Kendall tau between each score and the best val/acc each trained backbone reached."""
    from scipy.stats import kendalltau

    best = {}
    for row in trials:
        if row["state"] == "COMPLETE" and row["val_acc"] is not None:
            best[row["backbone"]] = max(best.get(row["backbone"], 0.0), row["val_acc"])
    trained = [r for r in ranking if r["backbone"] in best]
    rows = []
    for score in (c for c in COLUMNS if all(c in r for r in trained)):
        x, y = [r[score] for r in trained], [best[r["backbone"]] for r in trained]
        tau = float(kendalltau(x, y).statistic) if len(trained) >= 2 else math.nan
        rows.append({"score": score, "kendall_tau": tau, "backbones": len(trained)})
    return rows


def accuracy(data: list[dict]) -> tuple[float, float, int]:
    """Test accuracy at all the data: mean, sample std (nan with one seed), seeds."""
    values = [r["test_acc"] for r in data if r["fraction"] == 1.0 and r["test_acc"] is not None]
    if not values:
        return math.nan, math.nan, 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), std, len(values)


def projections(advice: Advice) -> list[dict]:
    """Expected accuracy at 1x, 2x and 5x the training images of all the data, with the band."""
    full = max((r["train_images"] for r in advice.data if r["fraction"] == 1.0), default=None)
    if advice.curve is None or full is None:
        return []
    rows = []
    for times in (1, 2, 5):
        low, high = advice.curve.band(full * times, advice.band)
        rows.append(
            {
                "data": f"{times}x",
                "train_images": full * times,
                "expected_acc": float(advice.curve(full * times)),
                "low": float(low[0]),
                "high": float(high[0]),
            }
        )
    return rows


def plot(advice: Advice, path: Path) -> Path | None:
    """Each run's test accuracy against its training images, the fitted curve to 5x, the band."""
    from src.tracking.plots import _pyplot

    points = [(r["train_images"], r["test_acc"]) for r in advice.data if r["test_acc"] is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    n, acc = np.array(points, dtype=float).T
    ax.scatter(n, acc * 100, color="k", zorder=3, label="runs (each seed)")
    if advice.curve is not None:
        grid = np.geomspace(n.min() * 0.8, n.max() * 5, 200)
        (line,) = ax.plot(grid, advice.curve(grid) * 100, label=curve_label(advice.curve))
        low, high = advice.curve.band(grid, advice.band)
        if np.all(np.isfinite(low)):
            ax.fill_between(
                grid,
                low * 100,
                high * 100,
                color=line.get_color(),
                alpha=0.2,
                label=f"{advice.band:.0%} band",
            )
        for times in (2, 5):
            ax.axvline(n.max() * times, color="grey", ls=":", lw=1)
    ax.set(
        xscale="log",
        xlabel="training images",
        ylabel="test accuracy (%)",
        title=f"{advice.dataset}: data efficiency of the recommendation",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_label(curve: Curve) -> str:
    return f"acc = {curve.a:.3f} - {curve.b:.3g}·n^-{curve.c:.2f}"


def percent(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def cell(value):
    return json.dumps(value) if isinstance(value, dict) else value


def summary(advice: Advice) -> dict:
    mean, std, seeds = accuracy(advice.data)
    curve = advice.curve
    return {
        "dataset": advice.dataset,
        "recommended": advice.best,
        "test_acc_mean": mean,
        "test_acc_std": std,
        "seeds": seeds,
        "command": advice.command,
        "winning_run": advice.winner,
        "trial_test_acc": advice.trial_test_acc,
        "curve": None if curve is None else {"a": curve.a, "b": curve.b, "c": curve.c},
        "projections": projections(advice),
        "mlflow_run": advice.parent_run,
        "skipped": advice.skipped,
    }


def table(rows: list[dict]) -> str:
    return markdown([{k: cell(v) for k, v in r.items()} for r in rows])
