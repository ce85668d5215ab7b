"""The transfer table's intervals and verdicts (src/report/intervals.py) from the runs' per-image
test predictions: every cell's accuracy with its 95 % bootstrap interval (test images and seeds),
LP-FT minus fine-tuning at each data size against Kumar et al.'s +1 point, the full-data cells, and
the convergence of the fine-tuning runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import study_results as sr  # noqa: E402

from src.report.intervals import (  # noqa: E402
    accuracy_interval,
    difference_interval,
    headline,
    verdict,
)

KEYS = ("dataset", "fraction", "strategy")
# Kumar et al. (ICLR 2022): LP-FT beats fine-tuning in distribution by about 1 point.
PUBLISHED_LPFT_GAIN = 0.01
MARGIN = 0.005  # half a point either side of it does not contradict "about 1 point"
RESAMPLES = 1000


def grid(uri: str, experiment: str, cache: Path) -> tuple[pd.DataFrame, dict]:
    """The experiment's finished runs and its cells' per-image correctness; none for an
    experiment not in the store (a slice run with FULL=0 has no transfer_table_full)."""
    from mlflow import MlflowClient

    if MlflowClient(uri).get_experiment_by_name(experiment) is None:
        return pd.DataFrame(columns=["run_id", *KEYS, "seed", "acc"]), {}
    runs = sr.training_runs(uri, (experiment,), KEYS)
    correct = sr.correctness(uri, runs["run_id"], cache)
    cells = {}
    for key, group in runs.groupby(list(KEYS)):
        matrix = sr.cell(group, correct)
        if matrix is not None:
            cells[key] = matrix
    return runs, cells


def cell_table(cells: dict) -> pd.DataFrame:
    rows: dict[str, dict[str, str]] = {}
    for (dataset, fraction, strategy), matrix in sorted(cells.items()):
        interval = accuracy_interval(matrix, RESAMPLES)
        rows.setdefault(strategy, {})[f"{dataset} / {fraction}"] = (
            f"{interval.format(100, 1)} (n={len(matrix)})"
        )
    return pd.DataFrame(rows).T


def lpft_lines(cells: dict) -> list[str]:
    """Per data set and size: LP-FT - fine-tuning on the same test images, with a verdict against
    +1 point (null: no difference), after one line counting the verdicts."""
    lines, words = [], []
    for dataset, fraction, strategy in sorted(cells):
        if strategy != "lp_ft" or (dataset, fraction, "finetune") not in cells:
            continue
        gap = difference_interval(
            cells[(dataset, fraction, "lp_ft")], cells[(dataset, fraction, "finetune")], RESAMPLES
        )
        words.append(verdict(gap, PUBLISHED_LPFT_GAIN, 0.0, MARGIN))
        what = f"{dataset} at fraction {fraction}: LP-FT − FT (points)"
        lines.append("  - " + headline(what, gap, PUBLISHED_LPFT_GAIN, 0.0, MARGIN, scale=100))
    if not lines:
        return ["- not measured yet"]
    counts = ", ".join(
        f"**{w}** in {words.count(w)}" for w in ("agree", "contradict", "inconclusive")
    )
    return [f"- Of {len(lines)} cells (data set × size): {counts}.", *lines]


def scratch_lines(cells: dict, fraction: str = "0.01") -> list[str]:
    """Per data set at the smallest size: the best and the weakest pretrained strategy against
    scratch on the same test images; "yes" only when the paired interval excludes 0."""
    lines = []
    for dataset in sorted({d for d, f, _ in cells if f == fraction}):
        scratch = cells.get((dataset, fraction, "scratch"))
        tuned = {s: m for (d, f, s), m in cells.items() if (d, f) == (dataset, fraction)}
        tuned.pop("scratch", None)
        if scratch is None or not tuned:
            lines.append(f"- {dataset}: not measured yet.")
            continue
        ranked = sorted(tuned, key=lambda s: tuned[s].mean(), reverse=True)
        parts = []
        for label, strategy in (("best", ranked[0]), ("weakest", ranked[-1])):
            gap = difference_interval(tuned[strategy], scratch, RESAMPLES)
            answer = "yes" if gap.low > 0 else ("no" if gap.high < 0 else "cannot tell")
            parts.append(
                f"{label} ({strategy}) − scratch = {gap.format(100, 1)} points: **{answer}**"
            )
        lines.append(f"- {dataset}: " + "; ".join(parts) + ".")
    return lines


GOAL = 0.92  # issue #29: a fine-tuned Fashion-MNIST model on all 60,000 images, at 64 px


def full_lines(cells: dict) -> list[str]:
    """The full-data cells, best first, with the fine-tuned model's goal."""
    lines = []
    for key in sorted(cells, key=lambda k: cells[k].mean(), reverse=True):
        (dataset, _, strategy), matrix = key, cells[key]
        interval = accuracy_interval(matrix, RESAMPLES)
        line = (
            f"- {strategy} on all training images ({dataset}): {interval.format(100, 2)} % on "
            f"{matrix.shape[1]:,} test images, {len(matrix)} seed(s)."
        )
        if strategy == "finetune":
            reached = "reached" if interval.estimate >= GOAL else "**not reached**"
            line += f" Goal ≥ {100 * GOAL:.0f} %: {reached}."
        lines.append(line)
    return lines


def convergence(uri: str, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The fine-tuning cells' change of validation accuracy over the last fifth of the epochs."""
    tuned = runs[runs["strategy"].isin(("finetune", "lp_ft"))]
    if tuned.empty:
        return pd.DataFrame(), "no fine-tuning runs yet"
    changes = tuned.assign(change=[sr.val_change(uri, r) for r in tuned["run_id"]])
    cells = sr.convergence(changes, ["strategy", "dataset", "fraction"])
    return sr.convergence_text(cells, ["dataset", "fraction"])


def section(uri: str, cache: Path) -> tuple[list[str], list[str]]:
    """(the headline answers, the interval section) from the runs' per-image predictions; both
    empty when no run has them (a page rebuilt from table.csv)."""
    runs, cells = grid(uri, "transfer_table", cache)
    if not cells:
        return [], []
    full_runs, full_cells = grid(uri, "transfer_table_full", cache)
    sizes = {d: m.shape[1] for (d, _, _), m in cells.items()}
    # The full-data runs' fraction tag is 1.0 too: they are their own column.
    flat, flat_summary = convergence(uri, pd.concat([runs, full_runs.assign(fraction="all")]))
    hours = sr.wall_hours(uri, ("transfer_table", "transfer_table_full")[: 2 if full_cells else 1])
    headlines = [
        "95 % bootstrap intervals over test images and seeds (`src/report/intervals.py`, "
        f"{RESAMPLES} resamples; differences paired on the same test images). Test images: "
        + ", ".join(f"{d} {n:,}" for d, n in sorted(sizes.items()))
        + ".",
        "",
        "**Best test accuracy on all of Fashion-MNIST's training set (54,000 + 6,000 images, "
        "64 px)?**",
        *(full_lines(full_cells) or ["- not run yet"]),
        "",
        "**Does pretrained beat scratch at 1 % (2 training + 1 validation image per class)?**",
        *scratch_lines(cells),
        "",
        "**Does LP-FT beat plain fine-tuning (Kumar et al. 2022: by about 1 point in "
        f"distribution)?** Verdict margin ±{100 * MARGIN:.1f} point around +1, null 0. At an "
        "equal budget of epochs: LP-FT probes for the first third of them, so it fine-tunes for "
        "two thirds of fine-tuning's steps (Kumar et al. fine-tune for as long as plain FT).",
        *lpft_lines(cells),
        "",
    ]
    details = [
        "## Intervals per cell",
        "",
        f"Wall time: {hours:.2f} h during which a run of either experiment was running "
        "(a pause between sessions is not counted). "
        + sr.load_sentence(
            Path(os.environ.get("OUT", HERE.parents[1] / "outputs" / "transfer_table"))
        ),
        "",
        "Test accuracy (%) per cell, 95 % interval, n = seeds:",
        "",
        sr.markdown(cell_table(cells), "strategy"),
        "",
        "Convergence: change of the validation curve (val/acc, mean over seeds, points) from the "
        "second-to-last fifth of the epochs to the last fifth, and the seeds' range; flat: "
        f"|change| ≤ {sr.FLAT_POINTS} point, bold: not flat. {flat_summary}:",
        "",
        sr.markdown(flat, "strategy") if not flat.empty else "- no fine-tuning runs yet",
        "",
    ]
    return headlines, details
