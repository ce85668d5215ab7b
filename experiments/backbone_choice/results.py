"""RESULTS.md of the backbone-choice study from its MLflow runs: accuracy per cell with 95 %
bootstrap intervals (test images and seeds; src/report/intervals.py), Kornblith et al.'s r and the
eight estimators' weighted Kendall tau with intervals, each headline with a verdict word against
the published value. Regenerate: `.venv/bin/python experiments/backbone_choice/results.py`
(MLFLOW_TRACKING_URI or OUT pick another store)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
REPORT = Path(os.environ.get("REPORT_DIR", HERE))  # elsewhere, e.g. for a smoke-sized run
sys.path.insert(0, str(HERE.parent))
import study_results as sr  # noqa: E402

from src.report.build import Report, write_report  # noqa: E402
from src.report.intervals import (  # noqa: E402
    accuracy_interval,
    correlation_interval,
    headline,
    mean_correlation_interval,
    pooled_correlation_interval,
)
from src.report.query import Query, search  # noqa: E402
from src.report.table import Layout  # noqa: E402

EXPERIMENT, SCORES_EXPERIMENT = "backbone_choice", "backbone_choice_scores"
BACKBONES = (  # worst to best on ImageNet
    "mobilenetv2_100",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
)
SHORT = dict(zip(BACKBONES, ("MobileNetV2", "Lite0", "Lite1", "Lite2"), strict=True))
PROTOCOLS = {"feature_extract": "fixed features", "finetune": "fine-tuned (full)"}
SCORES = ("logme", "leep", "nce", "hscore", "knn_acc", "nleep", "parc", "sfda")
# Weighted Kendall tau against fine-tuned accuracy, mean over 11 models x 11 data sets (SFDA
# paper, Table 1; ../shared/LITERATURE.md). The other three have no value there.
PUBLISHED_TAU = {"leep": 0.410, "logme": 0.509, "parc": 0.467, "nleep": 0.611, "sfda": 0.710}
PUBLISHED_R = {"feature_extract": 0.99, "finetune": 0.96}  # Kornblith et al. 2019, log-odds
MARGIN = 0.1  # a correlation within 0.1 of the published one does not contradict it
RESAMPLES = int(os.environ.get("RESAMPLES_REPORT", "1000"))


def logit(p):
    p = np.clip(np.asarray(p, dtype=float), 1e-4, 1 - 1e-4)  # a perfect score stays finite
    return np.log(p / (1 - p))


def cells(runs: pd.DataFrame, correct: dict) -> dict[tuple[str, str, str], np.ndarray]:
    """(strategy, dataset, backbone) -> bool [seeds, test images]."""
    out = {}
    for key, group in runs.groupby(["strategy", "dataset", "backbone"]):
        matrix = sr.cell(group, correct)
        if matrix is not None:
            out[key] = matrix
    return out


def accuracy_table(grid: dict) -> pd.DataFrame:
    rows = {}
    for (strategy, dataset, backbone), matrix in sorted(grid.items()):
        interval = accuracy_interval(matrix, RESAMPLES)
        label = f"{dataset} / {PROTOCOLS.get(strategy, strategy)}"
        rows.setdefault(label, {})[SHORT.get(backbone, backbone)] = (
            f"{interval.format(100, 1)} (n={len(matrix)})"
        )
    return pd.DataFrame(rows).T


def per_target(grid: dict, strategy: str) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """(the backbones measured, dataset -> their cells) for the targets where every one of them
    has a cell (all four in the full study; at least three make a correlation)."""
    backbones = [b for b in BACKBONES if any(k[0] == strategy and k[2] == b for k in grid)]
    datasets = sorted({d for s, d, _ in grid if s == strategy})
    targets = {
        d: [grid[(strategy, d, b)] for b in backbones]
        for d in datasets
        if all((strategy, d, b) in grid for b in backbones)
    }
    return backbones, (targets if len(backbones) >= 3 else {})


def kornblith(grid: dict, top1: dict[str, float]) -> tuple[pd.DataFrame, list[str]]:
    """Pearson r of logit(top-1) and logit(accuracy) per target, and on the log-odds averaged
    over targets (the paper's Figure 1), with intervals and verdicts."""
    table, lines = {}, []
    for strategy, name in PROTOCOLS.items():
        backbones, targets = per_target(grid, strategy)
        x = logit([top1[b] / 100 for b in backbones])
        for dataset, parts in targets.items():
            interval = correlation_interval(x, parts, "pearson", None, RESAMPLES, transform=logit)
            table.setdefault(dataset, {})[name] = interval.format(1, 2)
        if not targets:
            continue
        interval = pooled_correlation_interval(
            x, list(targets.values()), "pearson", RESAMPLES, transform=logit
        )
        table.setdefault("average log-odds", {})[name] = interval.format(1, 2)
        what = f"{name}: r (log-odds averaged over {len(targets)} targets)"
        lines.append("- " + headline(what, interval, PUBLISHED_R[strategy], 0.0, MARGIN))
    return pd.DataFrame(table).T, lines


def tau_text(interval) -> str:
    """A τ cell; "—" where τ is undefined (the score ties across the backbones: SFDA at 1.0)."""
    return interval.format(1, 2) if np.isfinite(interval.estimate) else "—"


def taus(grid: dict, tables: dict, fixed_scores: dict) -> tuple[pd.DataFrame, list[str]]:
    """Each score's weighted tau against the fine-tuned accuracies, per target and averaged,
    resampling test images, seeds and the scored training images. The estimate uses the scores
    on all the training images (fixed_scores), the resamples the scores on resampled ones."""
    backbones, targets = per_target(grid, "finetune")
    frame, lines, fixed = {}, [], set()
    for score in SCORES:
        parts = []
        for dataset, cell_list in targets.items():
            tabs = [tables.get((dataset, b)) for b in backbones]
            if any(t is None for t in tabs):
                continue
            x = [fixed_scores.get((dataset, b), {}).get(score, np.nan) for b in backbones]
            if not np.all(np.isfinite(x)):
                continue
            rescore = sr.rescorer(tabs, score)
            if rescore is None:
                fixed.add(score)
            interval = correlation_interval(x, cell_list, "weighted_tau", rescore, RESAMPLES // 4)
            frame.setdefault(dataset, {})[score] = tau_text(interval)
            parts.append((x, cell_list, rescore))
        if not parts:
            continue
        mean = mean_correlation_interval(parts, "weighted_tau", RESAMPLES // 4)
        frame.setdefault(f"mean over {len(parts)} targets", {})[score] = tau_text(mean)
        published = PUBLISHED_TAU.get(score)
        frame.setdefault("published (SFDA paper, Table 1)", {})[score] = (
            f"{published:.3f}" if published is not None else "—"
        )
        if published is not None and not np.isfinite(mean.estimate):
            lines.append(
                f"- {score}: mean weighted τ undefined (the score ties across the backbones on "
                f"every target; published {published:.3f}): **inconclusive**."
            )
        elif published is not None:
            lines.append("- " + headline(f"{score}: mean weighted τ", mean, published, 0.0, MARGIN))
    if fixed:
        lines.append(
            f"- {', '.join(sorted(fixed))}: no complete resample of the scored training images on "
            "some target (every resample failed for some backbone), so there its τ interval "
            "resamples test images and seeds only, with the score held at its value on all the "
            "training images."
        )
    return pd.DataFrame(frame).T.reindex(columns=list(SCORES)), lines


def full_scores(uri: str) -> dict[tuple[str, str], dict[str, float]]:
    """The scores on all the training images (not resampled), as logged on the similarity runs."""
    frame = search(Query(uri, (SCORES_EXPERIMENT,), {}, "FINISHED", kind="similarity"))
    return {
        (run["tags.dataset"], run["tags.backbone"]): {
            s: run.get(f"metrics.similarity/{s}", np.nan) for s in SCORES
        }
        for _, run in frame.sort_values("start_time").iterrows()
    }


def convergence(uri: str, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    tuned = runs[runs["strategy"] == "finetune"].replace({"backbone": SHORT})
    changes = tuned.assign(change=[sr.val_change(uri, r) for r in tuned["run_id"]])
    table, summary = sr.convergence_text(
        sr.convergence(changes, ["dataset", "backbone"]), ["backbone"]
    )
    return table[[b for b in SHORT.values() if b in table.columns]], summary


def main() -> None:
    out = Path(os.environ.get("OUT", HERE.parents[1] / "outputs" / "backbone_choice"))
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{out}/mlflow.db")
    cache = out / "cache" / "report"
    top1 = dict(OmegaConf.load(HERE.parents[1] / "conf" / "imagenet_top1.yaml").imagenet_top1)
    runs = sr.training_runs(uri, (EXPERIMENT,), ("backbone", "dataset", "strategy"))
    correct = sr.correctness(uri, runs["run_id"], cache)
    grid = cells(runs, correct)
    resampled = sr.score_resamples(uri, SCORES_EXPERIMENT, cache)
    tau_table, tau_lines = taus(grid, resampled, full_scores(uri))
    r_table, r_lines = kornblith(grid, top1)
    sizes = {d: m.shape[1] for (_, d, _), m in grid.items()}
    flat, flat_summary = convergence(uri, runs)
    hours = sr.wall_hours(uri, (EXPERIMENT, SCORES_EXPERIMENT))
    lines = [
        "# Which pretrained model? Results",
        "",
        f"{len(runs)} finished training runs (`{EXPERIMENT}`) and the scores (`{SCORES_EXPERIMENT}`)"
        f" in `{uri}`; {hours:.2f} h during which a run was running. Protocol: "
        "[README.md](README.md). Intervals: 95 % bootstrap over test images and seeds "
        f"({RESAMPLES} resamples; for τ also the scored training images), "
        "`src/report/intervals.py`; verdicts as defined there, with a margin of "
        f"{MARGIN} for correlations. " + sr.load_sentence(out),
        "",
        "Test images per target: "
        + ", ".join(f"{d} {n:,}" for d, n in sorted(sizes.items()))
        + ".",
        "",
        "## Headlines",
        "",
        *r_lines,
        *tau_lines,
        "",
        "## Test accuracy (%) per cell, 95 % interval, n = seeds",
        "",
        sr.markdown(accuracy_table(grid), "target / protocol"),
        "",
        "## Kornblith et al.: Pearson r of logit(ImageNet top-1) and logit(accuracy)",
        "",
        sr.markdown(r_table, "target"),
        "",
        "## The eight estimators: weighted Kendall τ against fine-tuned accuracy",
        "",
        sr.markdown(tau_table, "target"),
        "",
        "## Convergence of fine-tuning",
        "",
        "Change of the validation curve (val/acc, mean over seeds, points) from the second-to-last "
        "fifth of the epochs to the last fifth, and the seeds' range; flat: |change| ≤ "
        f"{sr.FLAT_POINTS} point, bold: not flat. {flat_summary}.",
        "",
        sr.markdown(flat, "target"),
        "",
    ]
    REPORT.mkdir(parents=True, exist_ok=True)
    write_report(
        Report(
            Query(uri, (EXPERIMENT,), {}, "FINISHED"),
            Layout(
                rows=("backbone",),
                columns=("dataset", "strategy"),
                metric="test/acc",
                row_order=BACKBONES,
            ),
            output_dir=REPORT,
            stem="table",
            title="Test accuracy (%) per backbone: fixed features and fully fine-tuned",
            plots={"imagenet_vs_transfer": {"line": "strategy", "panel": "dataset", "top1": top1}},
            experiment="reports",
            run_name=f"report-{EXPERIMENT}",
            artifact_location=str(out / "mlartifacts"),
            labels={"feature_extract": "fixed features", "finetune": "fine-tuned", **SHORT},
        )
    )
    lines += [
        "Mean ± std table: [table.md](table.md) ([LaTeX](table.tex), [CSV](table.csv)).",
        "",
        "![ImageNet top-1 against transfer accuracy](imagenet_vs_transfer.png)",
        "",
    ]
    (REPORT / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
