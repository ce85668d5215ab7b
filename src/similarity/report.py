"""How well did the scores predict training? `python -m src.similarity.report [experiments=[X]]`

Reads training runs that carry attached scores (metrics `similarity/*`, see tracking.py) and
their `test/acc`; the transfer gain of a run is its accuracy minus the mean accuracy of the
`strategy=scratch` runs on the same images (tag dataset_key). Per score: Pearson r and weighted
Kendall tau (scipy.stats.weightedtau, top ranks weigh most, as TLlib reports) over the run groups
(mean over seeds). Distances (emd, frechet, mmd) should correlate negatively, the rest positively.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from src.cli import entry_point
from src.errors import InvalidInput
from src.similarity.tracking import PREFIX
from src.tracking.tables import markdown

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
log = logging.getLogger(__name__)

SCORES = (
    "logme",
    "leep",
    "nce",
    "hscore",
    "knn_acc",
    "linear_acc",
    "nleep",
    "parc",
    "sfda",
    "domain_similarity",
    "emd",
    "frechet",
    "mmd",
)
GROUP = ["backbone", "weights", "target", "data", "strategy"]
# Smaller is closer: weighted τ must weigh their small end (the likely winners), so it ranks the
# negated distance, then flips the sign back to read like Pearson's r (negative: closer is better).
DISTANCES = ("emd", "frechet", "mmd")


def correlations(frame: pd.DataFrame, outcome: str) -> list[dict]:
    """One row per score column present: n, Pearson r (p-value) and weighted Kendall tau."""
    from scipy.stats import pearsonr, weightedtau

    rows = []
    for score in (s for s in SCORES if s in frame):
        pair = frame[[score, outcome]].dropna()
        if len(pair) < 3 or pair[score].nunique() < 2 or pair[outcome].nunique() < 2:
            continue
        r, p = pearsonr(pair[score], pair[outcome])
        sign = -1.0 if score in DISTANCES else 1.0
        tau = sign * weightedtau(sign * pair[score].to_numpy(), pair[outcome].to_numpy())[0]
        rows.append(
            {
                "score": score,
                "outcome": outcome,
                "n": len(pair),
                "pearson_r": float(r),
                "p_value": float(p),
                "weighted_tau": float(tau),
            }
        )
    return rows


def size_label(runs: pd.DataFrame) -> pd.Series:
    """'fraction 0.1, 300 per class': the share of the data a run trained on."""
    fraction = runs.get("tags.fraction", pd.Series("1.0", index=runs.index)).fillna("1.0")
    per_class = runs.get("tags.samples_per_class", pd.Series("None", index=runs.index))
    per_class = per_class.fillna("None").map(lambda v: "" if v == "None" else f", {v} per class")
    return "fraction " + fraction.astype(str) + per_class


def training_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """mlflow.search_runs output -> one row per run group: scores, acc, gain over scratch."""
    from src.tracking.kinds import TRAIN, run_kind

    if len(runs):  # plain training runs only: not similarity runs, sweep trials or advisor runs
        runs = runs[run_kind(runs) == TRAIN]
    runs = runs.dropna(subset=["metrics.test/acc", "tags.dataset_key"])
    target = runs["tags.dataset"]
    if "params.dataset/source/severity" in runs:  # corrupted copies: one target per severity
        severity = runs["params.dataset/source/severity"]
        target = target.where(severity.isna(), target + "@" + severity.astype(str))
    frame = pd.DataFrame(
        {
            "backbone": runs["tags.backbone"],
            "weights": runs.get("tags.weights", pd.Series("None", index=runs.index)).fillna("None"),
            "target": target,
            "dataset_key": runs["tags.dataset_key"],
            # How much of it: a 10% run's gain is over a 10% scratch run, not an all-size mean.
            "data": size_label(runs),
            "strategy": runs["tags.strategy"],
            "acc": runs["metrics.test/acc"],
        }
    )
    for score in SCORES:
        frame[score] = runs.get(f"metrics.{PREFIX}{score}", np.nan)
    same_data = ["dataset_key", "data"]
    scratch = frame[frame.strategy == "scratch"].groupby(same_data, as_index=False)["acc"].mean()
    frame = frame.merge(scratch.rename(columns={"acc": "scratch_acc"}), on=same_data, how="left")
    frame["gain"] = frame["acc"] - frame["scratch_acc"]
    grouped = frame[frame.strategy != "scratch"].groupby(GROUP, dropna=False)
    return (
        grouped.agg(
            {**{c: "mean" for c in ["acc", "scratch_acc", "gain", *SCORES]}, "dataset_key": "size"}
        )
        .rename(columns={"dataset_key": "runs"})
        .reset_index()
    )


def report(frame: pd.DataFrame) -> str:
    """Markdown: the table of predictions beside outcomes, then the correlations."""
    shown = [
        c
        for c in [*GROUP, "runs", "acc", "scratch_acc", "gain", *SCORES]
        if c in frame and not frame[c].isna().all()
    ]
    rows = (
        frame[shown].assign(weights=frame["weights"].map(lambda w: Path(w).name)).to_dict("records")
    )
    correlation_rows = [r for outcome in ("acc", "gain") for r in correlations(frame, outcome)]
    clean = lambda v: v if not isinstance(v, float) or not math.isnan(v) else ""  # noqa: E731
    return (
        "## Scores beside outcomes\n\n"
        + markdown([{k: clean(v) for k, v in row.items()} for row in rows])
        + "\n## Correlation (score vs outcome)\n\n"
        + markdown(correlation_rows)
    )


def write(tracking_uri: str, experiments: list[str] | None, out: Path | None) -> str:
    """The report over the finished training runs of `experiments` (None: all), printed and
    written to `out` when given."""
    import mlflow

    from src.tracking.store import tracking

    with tracking(tracking_uri):  # the caller's tracking URI comes back afterwards
        runs = mlflow.search_runs(
            experiment_names=experiments,
            search_all_experiments=experiments is None,
            filter_string="attributes.status = 'FINISHED'",
        )
    if runs.empty or "tags.dataset_key" not in runs:
        raise InvalidInput(
            f"No finished training runs with attached similarity scores in {tracking_uri}."
        )
    text = report(training_frame(runs))
    if out:
        out.write_text(text)
    print(text)
    return text


@entry_point("similarity_report", stores=lambda cfg: {"tracking_uri": cfg.tracking_uri})
def main(cfg: DictConfig) -> None:
    from src.outputs import check_output_file
    from src.tracking.store import done_line

    names = cfg.experiments
    experiments = [names] if isinstance(names, str) else list(names) if names else None
    if cfg.out:
        check_output_file(cfg.out, "out")
    write(cfg.tracking_uri, experiments, Path(cfg.out) if cfg.out else None)  # refusals: exit 2
    # No run of its own: it reads the store's training runs; the file, when asked for one.
    log.info(done_line(None, cfg.out or "stdout (out= writes a file)", cfg.tracking_uri))


if __name__ == "__main__":
    main()
