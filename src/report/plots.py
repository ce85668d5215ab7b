"""Report figures as PNG. Each takes the runs and a path first, returns the path, or None when\nthe runs hold nothing to draw."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from src.report.query import column
from src.report.table import is_number, natural_order, newest_per_seed
from src.tracking.plots import _pyplot


def seed_stats(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """mean, sample std (0 with one seed) and n of `value` per group."""
    stats = frame.groupby(by)[value].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def draw_lines(ax, stats: pd.DataFrame, x: str, line: str, scale: float) -> None:
    for name in natural_order(stats[line].astype(str)):
        points = stats[stats[line].astype(str) == name].sort_values(x)
        mean, std = points["mean"] * scale, points["std"] * scale
        (drawn,) = ax.plot(points[x], mean, marker="o", label=name)
        ax.fill_between(points[x], mean - std, mean + std, color=drawn.get_color(), alpha=0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_data(
    frame: pd.DataFrame, metric: str, keys: dict[str, str], seed: str
) -> pd.DataFrame | None:
    """Columns x, line, panel (from the keys' tags or params) and value, the newest run per seed."""
    columns = {name: column(frame, key) for name, key in keys.items()}
    if f"metrics.{metric}" not in frame or not all(c in frame for c in columns.values()):
        return None
    frame = newest_per_seed(frame, tuple(keys.values()), seed)
    renamed = {v: k for k, v in columns.items()} | {f"metrics.{metric}": "value"}
    data = frame.rename(columns=renamed)[[*keys, "value"]].dropna(subset=["value"])
    return data.assign(line=data["line"].astype(str), panel=data["panel"].astype(str))


def panels(data: pd.DataFrame, path: Path, labels: tuple[str, str, str], scale: float, xscale: str):
    """One panel per data["panel"] value, one line per data["line"], mean ± std over seeds."""
    xlabel, ylabel, panel = labels
    names = natural_order(data["panel"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        stats = seed_stats(data[data["panel"] == name], ["line", "x"], "value")
        draw_lines(ax, stats, "x", "line", scale)
        ax.set(xscale=xscale, xlabel=xlabel, ylabel=ylabel, title=f"{panel}: {name}")
    return save(plt, fig, path)


def data_efficiency(
    frame: pd.DataFrame, path: Path, metric: str, x: str = "fraction", line: str = "strategy",
    panel: str = "dataset", scale: float = 100.0, seed: str = "seed",
) -> Path | None:  # fmt: skip
    """Metric against the training fraction, one line per strategy, one panel per data set."""
    data = curve_data(frame, metric, {"x": x, "line": line, "panel": panel}, seed)
    if data is None:
        return None
    data = data[data["x"].astype(str).map(is_number)].assign(x=lambda d: d["x"].astype(float))
    return panels(data, path, (x, metric, panel), scale, "log") if len(data) else None


def imagenet_vs_transfer(
    frame: pd.DataFrame, path: Path, metric: str, top1: dict[str, float], line: str = "strategy",
    panel: str = "dataset", backbone: str = "backbone", scale: float = 100.0, seed: str = "seed",
) -> Path | None:  # fmt: skip
    """ImageNet top-1 of each backbone's weights against transfer accuracy (Kornblith et al.
    2019), one line per strategy, one panel per data set; backbones without a top-1 are left out,
    and so are runs from random weights (tag pretrained=False: ImageNet did not shape them)."""
    if "tags.pretrained" in frame:
        frame = frame[frame["tags.pretrained"] != "False"]
    data = curve_data(frame, metric, {"x": backbone, "line": line, "panel": panel}, seed)
    if data is None:
        return None
    data = data.assign(x=data["x"].map(top1)).dropna(subset=["x"])
    return (
        panels(data, path, ("ImageNet top-1 (%)", metric, panel), scale, "linear")
        if len(data)
        else None
    )


def histories(client: MlflowClient, frame: pd.DataFrame, metric: str, line: str) -> pd.DataFrame:
    """Columns line, step, value: every logged value of `metric` of every run."""
    line_col = column(frame, line)
    rows = []
    names = frame[line_col] if line_col in frame else pd.Series("?", index=frame.index)
    for run_id, name in zip(frame["run_id"], names, strict=True):
        rows += [(str(name), m.step, m.value) for m in client.get_metric_history(run_id, metric)]
    return pd.DataFrame(rows, columns=["line", "step", "value"])


def learning_curves(
    frame: pd.DataFrame, path: Path, metric: str, client: MlflowClient, line: str = "strategy",
    scale: float = 100.0,
) -> Path | None:  # fmt: skip
    """A metric's history (e.g. val/acc per epoch) per strategy: mean over runs with std band."""
    values = histories(client, frame, metric, line)
    if values.empty:
        return None
    stats = seed_stats(values, ["line", "step"], "value")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    draw_lines(ax, stats, "step", "line", scale)
    ax.set(xlabel="step", ylabel=metric, title=f"Learning curves: {metric}")
    return save(plt, fig, path)


def transferability(
    frame: pd.DataFrame, path: Path, score: str = "domain_similarity", outcome: str = "gain",
    scale: float = 100.0,
) -> Path | None:  # fmt: skip
    """A similarity or transferability score (metric `similarity/<score>`, attached to training
    runs) against transfer gain: test/acc over the scratch runs on the same images, one point per
    backbone x target x strategy (mean over seeds); Pearson r and weighted Kendall tau in the legend."""
    from src.similarity.report import correlations, training_frame

    if "tags.dataset_key" not in frame or f"metrics.similarity/{score}" not in frame:
        return None
    groups = training_frame(frame)
    found = {row["score"]: row for row in correlations(groups, outcome)}
    if score not in found:
        return None  # fewer than 3 groups, or no spread: no correlation to show
    stats = found[score]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    legend = f"r = {stats['pearson_r']:.2f}, τ = {stats['weighted_tau']:.2f} (n = {stats['n']})"
    ax.scatter(groups[score], groups[outcome] * scale, label=legend)
    for _, group in groups.iterrows():
        name = f"{group['target']}/{group['strategy']}"
        ax.annotate(name, (group[score], group[outcome] * scale), fontsize=6)
    ax.set(xlabel=score, ylabel=f"{outcome} (test/acc over scratch)", title=f"{score} vs {outcome}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(plt, fig, path)
