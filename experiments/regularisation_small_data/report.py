"""RESULTS.md for this study: test accuracy, mean ± std over seeds, from the MLflow runs."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXPERIMENT = "regularisation_small_data"
PRESETS = ["none", "default", "l2sp"]


def main() -> None:
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db"))
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="attributes.status = 'FINISHED'"
    )
    runs = runs.dropna(subset=["metrics.test/acc"])
    stats = (
        runs.groupby(["tags.fraction", "tags.regularisation"])["metrics.test/acc"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    lines = [
        "# Regularisation on small data: results",
        "",
        f"Test accuracy on the full Fashion-MNIST test split (10,000 images), mean ± std over seeds "
        f"(n = seeds). {len(runs)} finished runs in MLflow experiment `{EXPERIMENT}`; regenerate with "
        "`.venv/bin/python experiments/regularisation_small_data/report.py`.",
        "",
        "| training data | " + " | ".join(PRESETS) + " |",
        "|---|" + "---|" * len(PRESETS),
    ]
    for fraction in sorted(stats["tags.fraction"].unique(), key=float):
        row = stats[stats["tags.fraction"] == fraction].set_index("tags.regularisation")
        best = row["mean"].max()
        cells = []
        for preset in PRESETS:
            if preset not in row.index:
                cells.append("—")
                continue
            mean, std, n = row.loc[preset, ["mean", "std", "count"]]
            cell = f"{mean:.3f} ± {0.0 if n < 2 else std:.3f} (n={int(n)})"
            cells.append(f"**{cell}**" if mean == best else cell)
        lines.append(f"| {float(fraction):.0%} of train | " + " | ".join(cells) + " |")
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
