"""What both studies' results.py read from their MLflow store: finished runs, per-image test
correctness (the predictions artifact of every run), convergence of the validation curve, the
scores on half-samples of the training images, and the wall time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install

from src.report.query import Query, search  # noqa: E402
from src.report.table import newest_per_seed  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run: noise
FLAT_POINTS = 1.0  # "flat": the cell's last fifth of val/acc within 1 point of the fifth before it


def training_runs(uri: str, experiments: tuple[str, ...], keys: tuple[str, ...]) -> pd.DataFrame:
    """One row per finished training run (the newest of each cell and seed): run_id, `keys` (tags),
    seed, acc (test/acc), start and end time."""
    frame = search(Query(uri, experiments, {}, "FINISHED"))
    frame = frame.dropna(subset=["metrics.test/acc"]) if "metrics.test/acc" in frame else frame
    if frame.empty:
        return pd.DataFrame(columns=["run_id", *keys, "seed", "acc", "start_time", "end_time"])
    frame = newest_per_seed(frame, keys, "seed")
    out = frame[["run_id", "start_time", "end_time"]].copy()
    for key in (*keys, "seed"):
        out[key] = frame[f"tags.{key}"].to_numpy()
    out["acc"] = frame["metrics.test/acc"].to_numpy()
    return out.reset_index(drop=True)


def correctness(uri: str, run_ids, cache: Path) -> dict[str, np.ndarray]:
    """run_id -> bool [test images] from its predictions artifact (runs without one left out)."""
    from mlflow import MlflowClient

    from src.tracking.predictions import run_correctness

    client = MlflowClient(uri)
    found = {}
    for run_id in run_ids:
        correct = run_correctness(client, run_id, cache)
        if correct is not None:
            found[run_id] = correct
    return found


def cell(runs: pd.DataFrame, correct: dict[str, np.ndarray]) -> np.ndarray | None:
    """The cell's correctness, bool [seeds, images], from its runs (None when none has one)."""
    rows = [correct[r] for r in runs["run_id"] if r in correct]
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return np.vstack(rows)


def val_change(uri: str, run_id: str) -> float:
    """Points of val/acc gained from the second-to-last fifth of the epochs to the last fifth
    (means): near 0 means the run had converged. NaN below 5 epochs."""
    from mlflow import MlflowClient

    history = sorted(MlflowClient(uri).get_metric_history(run_id, "val/acc"), key=lambda m: m.step)
    values = np.array([m.value for m in history])
    fifth = len(values) // 5
    if fifth == 0:
        return float("nan")
    return 100 * float(values[-fifth:].mean() - values[-2 * fifth : -fifth].mean())


def convergence(changes: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell (`keys`), from one `change` (val_change) per seed: the change of the cell's
    validation curve (the mean over seeds), the seeds' range, and whether it is flat
    (|mean| <= FLAT_POINTS). The mean, not the seeds' largest |change|: a 200-image validation
    set moves by 0.5 point per image, and the largest of 3 noisy changes overstates the drift."""
    grouped = changes.dropna(subset=["change"]).groupby(keys)["change"]
    cells = pd.DataFrame({"mean": grouped.mean(), "low": grouped.min(), "high": grouped.max()})
    cells["seeds"] = grouped.size()
    cells["flat"] = cells["mean"].abs() <= FLAT_POINTS
    return cells


def convergence_text(cells: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """The convergence table as printed (`+0.8 (−0.2…+1.8)`: the mean change and the seeds'
    range, in points, a still-rising cell in bold) and its one-line summary."""

    def text(row) -> str:
        value = f"{row['mean']:+.1f}"
        if row["seeds"] > 1:
            value += f" ({row['low']:+.1f}…{row['high']:+.1f})"
        return value if row["flat"] else f"**{value}**"

    table = cells.apply(text, axis=1).unstack(columns).fillna("—")
    if isinstance(table.columns, pd.MultiIndex):  # e.g. (dataset, fraction): "mnist / 0.1"
        table.columns = [" / ".join(map(str, c)) for c in table.columns]

    def named(moving: pd.DataFrame, how: str) -> str:
        names = [" / ".join(map(str, np.atleast_1d(i))) for i in moving.index]
        return f"; {how}: {', '.join(names)}" if names else ""

    moving = cells[~cells["flat"]]
    summary = (
        f"{int(cells['flat'].sum())} of {len(cells)} cells flat (|change| ≤ {FLAT_POINTS} point)"
        + named(moving[moving["mean"] > 0], "still rising")
        + named(
            moving[moving["mean"] < 0], "falling (past its best epoch, which is the one tested)"
        )
    )
    return table, summary


def score_resamples(uri: str, experiment: str, cache: Path) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, backbone) -> the scores on each resample (half-sample) of its training images."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    frame = search(Query(uri, (experiment,), {}, "FINISHED", kind="similarity"))
    tables = {}
    for _, run in frame.sort_values("start_time").iterrows():
        try:
            local = client.download_artifacts(
                run["run_id"], "score_resamples.csv", str(cache / run["run_id"])
            )
        except Exception:  # a run scored without resamples: its score stays fixed
            continue
        tables[(run["tags.dataset"], run["tags.backbone"])] = pd.read_csv(local)
    return tables


def rescorer(tables: list[pd.DataFrame | None], score: str):
    """rescore(rng) for src.report.intervals: one resample index, the same for every backbone
    (the same training images), drawn among the resamples where every backbone's score is a
    number (an estimator failing on one resample, e.g. NLEEP's SVD, leaves that row NaN); None
    when a backbone has no resamples or none is complete: the score is then held fixed."""
    if any(t is None or score not in t for t in tables):
        return None
    count = min(len(t) for t in tables)
    complete = [b for b in range(count) if all(np.isfinite(t[score].iloc[b]) for t in tables)]
    if not complete:
        return None

    def rescore(rng: np.random.Generator) -> list[float]:
        b = complete[int(rng.integers(len(complete)))]
        return [float(t[score].iloc[b]) for t in tables]

    return rescore


def wall_hours(uri: str, experiments: tuple[str, ...]) -> float:
    """Hours during which at least one of the study's runs was running: a study resumed in a
    later session does not count the pause between (a run resumed across it still does)."""
    frame = search(Query(uri, experiments, kind=None)).dropna(subset=["start_time", "end_time"])
    return busy_seconds(zip(frame["start_time"], frame["end_time"], strict=True)) / 3600


def busy_seconds(spans) -> float:
    """The length of the union of (start, end) intervals (timestamps), in seconds."""
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def load_sentence(out_dir: Path) -> str:
    """The machine's load average (1, 5, 15 min) at each start and end of the study, as
    run_study.sh records them in out_dir/logs/load.txt: the numbers' wall times depend on it."""
    record = Path(out_dir) / "logs" / "load.txt"
    lines = record.read_text().splitlines() if record.is_file() else []
    if not lines:
        return "The machine's load during the study was not recorded."
    return "Machine load average (1, 5, 15 min) on 2 cores: " + "; ".join(lines) + "."


def markdown(frame: pd.DataFrame, index: str = "") -> str:
    head = f"| {index} | " + " | ".join(map(str, frame.columns)) + " |"
    lines = [head, "|" + "---|" * (len(frame.columns) + 1)]
    for label, row in frame.iterrows():
        cells = ["—" if (not isinstance(v, str) and pd.isna(v)) else str(v) for v in row]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
