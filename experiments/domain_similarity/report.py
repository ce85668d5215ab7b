"""RESULTS.md and similarity_vs_gain.png for this study, from its MLflow runs: the scores measured
before training (attached to each fine-tuning run) beside the gain over scratch, and the correlation.
Regenerate: `.venv/bin/python experiments/domain_similarity/report.py`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402

from src.similarity.report import correlations, report, training_frame  # noqa: E402

EXPERIMENT = "domain_similarity"
PLOT = "similarity_vs_gain.png"
PANELS = [("domain_similarity", "Cui et al. domain similarity exp(-0.01 EMD)"), ("logme", "LogME")]


def plot(frame, path: Path) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    for ax, (score, title) in zip(axes, PANELS, strict=True):
        ax.scatter(frame[score], frame["gain"])
        for _, row in frame.iterrows():
            label = row["target"].replace("fashion_mnist_corrupted@", "F-MNIST severity ")
            ax.annotate(label, (row[score], row["gain"]), fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel=title, ylabel="test accuracy gain over scratch", title=title)
    fig.savefig(path, dpi=120)


def source_accuracy() -> str:
    runs = mlflow.search_runs(
        experiment_names=[f"{EXPERIMENT}_source"],
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return "unknown" if runs.empty else f"{runs['metrics.test/acc'].iloc[0]:.3f}"


def main() -> None:
    default = f"sqlite:///{ROOT}/outputs/domain_similarity/mlflow.db"  # run.sh's own store
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", default))
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="attributes.status = 'FINISHED'"
    )
    frame = training_frame(runs).sort_values("target").reset_index(drop=True)
    plot(frame, HERE / PLOT)
    headline = {r["score"]: r for r in correlations(frame, "gain")}
    cui, lm = headline.get("domain_similarity", {}), headline.get("logme", {})
    lines = [
        "# Domain similarity vs transfer gain: results",
        "",
        f"{len(runs)} finished training runs in MLflow experiment `{EXPERIMENT}` (fine-tuned from "
        f"the source model and from scratch, seeds averaged); the source model (ResNet-10-T, "
        f"Fashion-MNIST, 32 px) reaches test accuracy {source_accuracy()} on its own task. "
        "Regenerate the whole study with `experiments/domain_similarity/run.sh`, this page from "
        "the runs with `.venv/bin/python experiments/domain_similarity/report.py`.",
        "",
        f"**Headline**: Cui similarity vs gain: Pearson r = {cui.get('pearson_r', float('nan')):.2f}, "
        f"weighted Kendall tau = {cui.get('weighted_tau', float('nan')):.2f} (n = {cui.get('n', 0)} "
        f"targets); LogME vs gain: r = {lm.get('pearson_r', float('nan')):.2f}, "
        f"tau = {lm.get('weighted_tau', float('nan')):.2f}.",
        "",
        f"![similarity vs gain]({PLOT})",
        "",
        report(frame),
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
