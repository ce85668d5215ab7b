"""src.report's `reliability` plot: reliability diagrams of temperature-scaled runs from the
validation bins src.posthoc method=calibrate logs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from src.tracking.plots import _pyplot


def reliability(
    frame: pd.DataFrame, path: Path, client: MlflowClient, title: str = "", most: int = 6
) -> Path | None:
    """Reliability diagrams of calibrated runs (src.posthoc method=calibrate logs them as
    calibration/val_{confidence,accuracy}[_uncalibrated] by bin): accuracy against confidence
    before and after temperature scaling, one panel per run (the first `most`)."""
    curves = {}
    for run_id in frame["run_id"]:
        got = {
            name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
            for name in RELIABILITY
        }
        if all(got.values()):
            curves[run_id] = got
    if not curves:
        return None
    plt = _pyplot()
    shown = list(curves)[:most]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.6), squeeze=False)
    for ax, run_id in zip(axes[0], shown, strict=True):
        for suffix, label in (("_uncalibrated", "before"), ("", "after")):
            conf = [v for _, v in curves[run_id][f"calibration/val_confidence{suffix}"]]
            acc = [v for _, v in curves[run_id][f"calibration/val_accuracy{suffix}"]]
            ax.plot(conf, acc, marker="o", label=label)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="Confidence",
            ylabel="Accuracy",
            title=run_label(frame, run_id),
        )
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


RELIABILITY = [
    f"calibration/val_{kind}{suffix}"
    for kind in ("confidence", "accuracy")
    for suffix in ("", "_uncalibrated")
]


def run_label(frame: pd.DataFrame, run_id: str) -> str:
    """dataset / strategy / seed of a run, from its tags where the frame has them."""
    row = frame[frame["run_id"] == run_id].iloc[0]
    parts = [row.get(f"tags.{key}") for key in ("dataset", "strategy", "seed")]
    return " / ".join(str(p) for p in parts if isinstance(p, str)) or run_id[:8]
