"""Report figures as PNG. Each takes the report's selected runs (one per cell and seed, see
table.select) and a path first, returns the path, or None when the runs hold nothing to draw.

Every figure: axis labels in words (src/report/labels.py), the report's title above it, std bands
clipped to the metric's range (an accuracy stays within 0-100 %), and a panel whose x-axis has
fewer than 2 points left out with a logged note (a line needs two points)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from src.report.labels import key_label, metric_label, value_label
from src.report.query import column
from src.report.reliability import reliability  # noqa: F401  (a plot build.py finds here)
from src.report.table import is_number, natural_order
from src.tracking.plots import _pyplot

log = logging.getLogger(__name__)


def bounds(metric: str, scale: float) -> tuple[float, float] | None:
    """The range a metric cannot leave: [0, 1] x scale for scores, none for losses."""
    name = metric.rsplit("/", 1)[-1]
    return None if "loss" in name else (0.0, scale)


def seed_stats(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """mean, sample std (0 with one seed) and n of `value` per group."""
    stats = frame.groupby(by)[value].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def draw_lines(
    ax,
    stats: pd.DataFrame,
    x: str,
    line: str,
    scale: float,
    limits=None,
    legend: bool = True,
    colors: dict | None = None,
) -> None:
    """One line per `line` value, mean with a ±std band (clipped to `limits`); `colors` keeps a
    line's colour the same in every panel."""
    for name in natural_order(stats[line].astype(str)):
        points = stats[stats[line].astype(str) == name].sort_values(x)
        mean, std = points["mean"] * scale, points["std"] * scale
        low, high = mean - std, mean + std
        if limits is not None:
            low, high = low.clip(*limits), high.clip(*limits)
        color = (colors or {}).get(name)
        (drawn,) = ax.plot(points[x], mean, marker="o", label=name, color=color)
        ax.fill_between(points[x], low, high, color=drawn.get_color(), alpha=0.2)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def save(plt, fig, path: Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")  # a legend beside the panels stays in
    plt.close(fig)
    return path


def line_labels(
    frame: pd.DataFrame, line: str, keys: tuple[str, ...], within: list[str], labels=None
) -> pd.Series:
    """The legend entry of each run: its `line` value, plus the value of every other table key
    that varies among the runs of one plotted point (`within`: the columns that place a point),
    so two backbones are two lines, never one average."""
    parts = [
        frame[column(frame, line)]
        .fillna("?")
        .astype(str)
        .map(lambda v: value_label(line, v, labels))
    ]
    point = frame[within].fillna("?").astype(str).agg("|".join, axis=1) if len(frame) else None
    for key in keys:
        name = column(frame, key)
        if name not in frame or name in within or point is None:
            continue
        if frame[name].fillna("?").astype(str).groupby(point).nunique().max() > 1:
            parts.append(
                frame[name].fillna("?").astype(str).map(lambda v, k=key: value_label(k, v, labels))
            )
    return parts[0].str.cat(parts[1:], sep=", ") if len(parts) > 1 else parts[0]


def curve_data(
    frame: pd.DataFrame,
    metric: str,
    keys: dict[str, str],
    others: tuple[str, ...] = (),
    labels: dict | None = None,
) -> pd.DataFrame | None:
    """Columns x, line, panel and value, one row per selected run; `others` (the table's keys
    besides x, line and panel) join the line's label where they vary."""
    columns = {name: column(frame, key) for name, key in keys.items()}
    if f"metrics.{metric}" not in frame or not all(c in frame for c in columns.values()):
        return None
    lines = line_labels(frame, keys["line"], others, list(columns.values()), labels)
    data = pd.DataFrame(
        {
            "x": frame[columns["x"]],
            "panel": frame[columns["panel"]].astype(str),
            "line": lines,
            "value": frame[f"metrics.{metric}"],
        }
    ).dropna(subset=["value"])
    return data


def panels(
    data: pd.DataFrame,
    path: Path,
    axes_labels: tuple[str, str, str],
    scale: float,
    xscale: str,
    limits=None,
    title: str = "",
    percent_x: bool = False,
) -> Path | None:
    """One panel per data["panel"] value, one line per data["line"], mean ± std over seeds; a
    panel with fewer than 2 x values is left out (noted in the log); None if none is left."""
    stats = seed_stats(data, ["panel", "line", "x"], "value")
    return stats_panels(stats, path, axes_labels, scale, xscale, limits, title, percent_x)


def stats_panels(
    stats: pd.DataFrame,
    path: Path,
    axes_labels: tuple[str, str, str],
    scale: float,
    xscale: str,
    limits=None,
    title: str = "",
    percent_x: bool = False,
) -> Path | None:
    """panels() from statistics already made: columns panel, line, x, mean, std."""
    xlabel, ylabel, panel_key = axes_labels
    names = []
    for name in natural_order(stats["panel"]):
        points = stats[stats["panel"] == name]["x"].nunique()
        if points < 2:
            log.info(
                "%s: panel %s left out: %d point(s) on its x-axis (%s)",
                path.name,
                name,
                points,
                xlabel,
            )
        else:
            names.append(name)
    if not names:
        log.info("%s not drawn: no panel has 2 points on its x-axis", path.name)
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {line: cycle[i % len(cycle)] for i, line in enumerate(natural_order(stats["line"]))}
    for ax, name in zip(axes[0], names, strict=True):
        draw_lines(ax, stats[stats["panel"] == name], "x", "line", scale, limits, False, colors)
        ax.set(xscale=xscale, xlabel=xlabel, ylabel=ylabel, title=value_label(panel_key, name))
        if xscale == "linear" and all(float(v).is_integer() for v in stats["x"]):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 1.25
        if percent_x:  # fractions read as shares of the data: 1%, 10%, 100%
            percent_axis(ax, sorted(stats[stats["panel"] == name]["x"].unique()))
    # One legend for every panel, beside them, where it hides no line.
    handles, texts = {}, []
    for ax in axes[0]:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    texts = natural_order(handles)
    fig.legend(
        [handles[t] for t in texts],
        texts,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        frameon=False,
    )
    return save(plt, fig, path, title)


def percent_axis(ax, ticks: list[float]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g}%"))


def data_efficiency(
    frame: pd.DataFrame,
    path: Path,
    metric: str,
    x: str = "fraction",
    line: str = "strategy",
    panel: str = "dataset",
    scale: float = 100.0,
    keys: tuple[str, ...] = (),
    title: str = "",
    labels: dict | None = None,
) -> Path | None:
    """Metric against the training fraction, one line per strategy, one panel per data set."""
    data = curve_data(frame, metric, {"x": x, "line": line, "panel": panel}, keys, labels)
    if data is None:
        return None
    data = data[data["x"].astype(str).map(is_number)].assign(x=lambda d: d["x"].astype(float))
    if not len(data):
        return None
    axes = (key_label(x, labels), metric_label(metric, scale, labels), panel)
    percent = x.rsplit("/", 1)[-1].endswith("fraction")
    return panels(data, path, axes, scale, "log", bounds(metric, scale), title, percent)


def imagenet_vs_transfer(
    frame: pd.DataFrame,
    path: Path,
    metric: str,
    top1: dict[str, float],
    line: str = "strategy",
    panel: str = "dataset",
    backbone: str = "backbone",
    scale: float = 100.0,
    keys: tuple[str, ...] = (),
    title: str = "",
    labels: dict | None = None,
) -> Path | None:
    """ImageNet top-1 of each backbone's weights against transfer accuracy (Kornblith et al.
    2019), one line per strategy, one panel per data set; backbones without a top-1 are left out,
    and so are runs from random weights (tag pretrained=False: ImageNet did not shape them)."""
    if "tags.pretrained" in frame:
        frame = frame[frame["tags.pretrained"] != "False"]
    data = curve_data(frame, metric, {"x": backbone, "line": line, "panel": panel}, keys, labels)
    if data is None:
        return None
    data = data.assign(x=data["x"].map(top1)).dropna(subset=["x"])
    if not len(data):
        return None
    axes = ("ImageNet top-1 accuracy (%)", metric_label(metric, scale, labels), panel)
    return panels(data, path, axes, scale, "linear", bounds(metric, scale), title)


def histories(client: MlflowClient, frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Columns run_id, epoch, value: every logged value of `metric` of every run, by epoch from 1
    (from the `epoch` metric Lightning logs at the same step; else the n-th value is epoch n)."""
    rows = []
    for run_id in frame["run_id"]:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
        epochs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
        for index, (step, value) in enumerate(points):  # counted from 1, as a reader does
            rows.append((run_id, int(epochs.get(step, index)) + 1, value))
    return pd.DataFrame(rows, columns=["run_id", "epoch", "value"])


def learning_curves(
    frame: pd.DataFrame,
    path: Path,
    metric: str,
    client: MlflowClient,
    line: str = "strategy",
    panel: str = "dataset",
    scale: float = 100.0,
    keys: tuple[str, ...] = (),
    title: str = "",
    labels: dict | None = None,
) -> Path | None:
    """A metric's history by epoch (e.g. val/acc), one line per strategy (mean over seeds, std
    band), one panel per data set. Epochs, not optimizer steps: runs with other data sizes take
    other steps per epoch."""
    if frame.empty or column(frame, line) not in frame:
        return None
    values = histories(client, frame, metric)
    if values.empty:
        return None
    panel_column = column(frame, panel)
    within = [c for c in (column(frame, line), panel_column) if c in frame]
    runs = pd.DataFrame(
        {
            "run_id": frame["run_id"],
            "line": line_labels(frame, line, keys, within, labels),
            "panel": frame[panel_column].astype(str) if panel_column in frame else "all",
        }
    )
    data = values.merge(runs, on="run_id").rename(columns={"epoch": "x"})
    axes = ("Epoch", metric_label(metric, scale, labels), panel)
    return panels(data, path, axes, scale, "linear", bounds(metric, scale), title)


def transferability(
    frame: pd.DataFrame,
    path: Path,
    score: str = "domain_similarity",
    outcome: str = "gain",
    scale: float = 100.0,
    title: str = "",
) -> Path | None:
    """A similarity or transferability score (metric `similarity/<score>`, attached to training
    runs) against transfer gain: test/acc over the scratch runs on the same images, one point per
    backbone x target x strategy (mean over seeds); Pearson r and weighted Kendall tau in the legend."""
    from src.similarity.report import correlations, training_frame

    if "tags.dataset_key" not in frame or f"metrics.similarity/{score}" not in frame:
        return None
    groups = training_frame(frame)
    found = {row["score"]: row for row in correlations(groups, outcome)}
    if score not in found:
        log.info("%s not drawn: fewer than 3 groups, or no spread, for %s", path.name, score)
        return None
    stats = found[score]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    legend = f"r = {stats['pearson_r']:.2f}, τ = {stats['weighted_tau']:.2f} (n = {stats['n']})"
    ax.scatter(groups[score], groups[outcome] * scale, label=legend)
    for _, group in groups.iterrows():
        name = f"{group['target']}/{group['strategy']}"
        ax.annotate(name, (group[score], group[outcome] * scale), fontsize=6)
    words = score.replace("_", " ")
    ylabel = "Gain over scratch (test accuracy, points)" if outcome == "gain" else outcome
    ax.set(xlabel=words.capitalize(), ylabel=ylabel, title=f"{words.capitalize()} vs {outcome}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(plt, fig, path, title)
