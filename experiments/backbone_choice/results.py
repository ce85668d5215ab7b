"""RESULTS.md, the tables and the plot of the backbone-choice study, from its MLflow runs (the
accuracy table and plot through src.report, logged as a kind=report run). Regenerate:
`.venv/bin/python experiments/backbone_choice/results.py` (MLFLOW_TRACKING_URI picks another store).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy import stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # this tree's src, not another checkout's editable install

from src.report.build import Report, write_report  # noqa: E402
from src.report.query import Query, search  # noqa: E402
from src.report.table import Layout, newest_per_seed  # noqa: E402

EXPERIMENT, SCORES_EXPERIMENT = "backbone_choice", "backbone_choice_scores"
TOP1_FILE = ROOT / "conf" / "imagenet_top1.yaml"
# The four offline backbones, worst to best on ImageNet.
BACKBONES = (
    "mobilenetv2_100",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
)
SHORT = dict(zip(BACKBONES, ("MobileNetV2", "Lite0", "Lite1", "Lite2"), strict=True))
PROTOCOLS = {"feature_extract": "fixed features (logistic regression)", "partial": "fine-tuned"}
SCORES = ("logme", "leep", "nce", "hscore", "knn_acc")
# Weighted Kendall tau of each score against fine-tuned accuracy, as published (../shared/LITERATURE.md:
# TLlib's model-selection README, 10 ImageNet models; LEEP only on Aircraft). None: not published there.
PAPER_TAU = {
    "FGVC Aircraft": {"logme": 0.595, "leep": -0.264},
    "Caltech-101": {"logme": 0.697},
    "CIFAR-10": {"logme": 0.785},
    "CIFAR-100": {"logme": 0.790},
    "DTD": {"logme": 0.550},
    "Pets": {"logme": 0.502},
    "Stanford Cars": {"logme": 0.654},
    "SUN397": {"logme": 0.748},
}


def imagenet_top1() -> tuple[dict[str, float], str]:
    conf = OmegaConf.load(TOP1_FILE)
    return dict(conf.imagenet_top1), str(conf.imagenet_top1_source)


def log_odds(p: np.ndarray, n: int) -> np.ndarray:
    """logit(p), with p kept 1/(2n) inside [0, 1] (a perfect score on n test images is finite)."""
    p = np.clip(np.asarray(p, dtype=float), 1 / (2 * n), 1 - 1 / (2 * n))
    return np.log(p / (1 - p))


def accuracies(uri: str) -> pd.DataFrame:
    """One row per finished training run: backbone, dataset, strategy, seed, test/acc, test size."""
    frame = search(Query(uri, (EXPERIMENT,)))  # kind=train: plain runs and -m grid points
    keep = {
        "tags.backbone": "backbone", "tags.dataset": "dataset", "tags.strategy": "strategy",
        "tags.seed": "seed", "metrics.test/acc": "acc",
    }  # fmt: skip
    frame = frame.dropna(subset=["metrics.test/acc"])
    # A rerun of run.sh into the same store: only the newest run of each seed counts, as in the
    # table (otherwise r and τ would weigh a rerun cell twice).
    frame = newest_per_seed(frame, ("backbone", "dataset", "strategy"), "seed")
    frame = frame.rename(columns=keep)[list(keep.values())]
    return frame[frame["backbone"].isin(BACKBONES)]


def scores(uri: str) -> pd.DataFrame:
    """The transferability scores of each (dataset, backbone), computed before any training."""
    frame = search(Query(uri, (SCORES_EXPERIMENT,), kind="similarity"))
    columns = {f"metrics.similarity/{s}": s for s in SCORES}
    frame = frame.rename(
        columns={"tags.backbone": "backbone", "tags.dataset": "dataset", **columns}
    )
    frame = frame.sort_values("start_time").drop_duplicates(["dataset", "backbone"], keep="last")
    return frame.set_index(["dataset", "backbone"])[list(columns.values())]


def mean_acc(acc: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """Mean test accuracy over seeds: one row per dataset, one column per backbone."""
    chosen = acc[acc["strategy"] == strategy]
    return chosen.groupby(["dataset", "backbone"])["acc"].mean().unstack("backbone")


def correlations(acc: pd.DataFrame, top1: dict[str, float], test_size: int) -> pd.DataFrame:
    """Kornblith et al.'s correlation: Pearson r between logit(ImageNet top-1) and logit(transfer
    accuracy) over the backbones, per data set and on the log-odds averaged over data sets."""
    rows = []
    for strategy in PROTOCOLS:
        means = mean_acc(acc, strategy).reindex(columns=BACKBONES).dropna()
        if means.empty:
            continue
        x = log_odds(np.array([top1[b] for b in BACKBONES]) / 100, 10**6)
        odds = means.apply(
            lambda row: log_odds(row.to_numpy(), test_size), axis=1, result_type="expand"
        )
        for dataset, row in odds.iterrows():
            constant = np.ptp(row.to_numpy()) == 0  # e.g. every backbone at 100 %: r undefined
            rows.append((strategy, dataset, np.nan if constant else stats.pearsonr(x, row)[0]))
        rows.append((strategy, "average log-odds", stats.pearsonr(x, odds.mean().to_numpy())[0]))
    return pd.DataFrame(rows, columns=["strategy", "dataset", "r"])


def taus(acc: pd.DataFrame, score_frame: pd.DataFrame) -> pd.DataFrame:
    """Per data set, each score's weighted Kendall tau (scipy's weightedtau, hyperbolic weights
    on the top ranks, as You et al. 2021 use) against the mean fine-tuned accuracy of the backbones."""
    finetuned = mean_acc(acc, "partial").reindex(columns=BACKBONES)
    table = {}
    for dataset, row in finetuned.dropna().iterrows():
        if dataset not in score_frame.index.get_level_values("dataset"):
            continue
        sub = score_frame.loc[dataset].reindex(BACKBONES)
        table[dataset] = {
            s: stats.weightedtau(sub[s].to_numpy(), row.to_numpy())[0] for s in SCORES
        }
    frame = pd.DataFrame(table).T
    ranked = [d for d in frame.index if (finetuned.loc[d] >= 1.0).sum() < 2]
    if ranked:  # a target where two or more backbones score 100 % has no ranking to predict
        frame.loc["mean (not at the ceiling)"] = frame.loc[ranked].mean()
    return frame


def ceiling(acc: pd.DataFrame) -> list[str]:
    """Targets where two or more backbones reach 100 % fine-tuned: ranked by noise only."""
    finetuned = mean_acc(acc, "partial").reindex(columns=BACKBONES)
    return [d for d, row in finetuned.iterrows() if (row >= 1.0).sum() >= 2]


def missing(acc: pd.DataFrame, seeds=(0, 1, 2)) -> list[str]:
    """Fine-tuning runs of the design (every seed x backbone x target) that have not finished,
    per seed: "seed 1: all 20" or the missing pairs."""
    done = set(
        map(tuple, acc[acc["strategy"] == "partial"][["seed", "backbone", "dataset"]].values)
    )
    targets = sorted(acc["dataset"].unique())
    lines = []
    for seed in seeds:
        left = [(b, d) for b in BACKBONES for d in targets if (str(seed), b, d) not in done]
        if len(left) == len(BACKBONES) * len(targets):
            lines.append(f"seed {seed}: all {len(left)}")
        elif left:
            lines.append(f"seed {seed}: " + ", ".join(f"{SHORT[b]} on {d}" for b, d in left))
    return lines


def agreement(tau: pd.DataFrame) -> list[str]:
    """Where our mean τ agrees with the published values (LITERATURE.md) and where it does not."""
    if "mean (not at the ceiling)" not in tau.index:
        return []
    mean = tau.loc["mean (not at the ceiling)"]
    published = [v["logme"] for v in PAPER_TAU.values()]
    low, high = min(published), max(published)
    place = (
        "inside" if low <= mean["logme"] <= high else ("below" if mean["logme"] < low else "above")
    )
    best = mean.idxmax()
    return [
        f"- LogME: our mean τ {mean['logme']:+.2f} is **{place}** the published range "
        f"{low:+.2f}…{high:+.2f} (8 data sets, 10 models each).",
        f"- LEEP: ours {mean['leep']:+.2f}; the one published value (Aircraft) is -0.26, where "
        "LogME beat LEEP. "
        + (
            "Here too LogME ranks better than LEEP."
            if mean["logme"] > mean["leep"]
            else "Here LEEP ranks better than LogME: the paper's ordering of the two is not reproduced."
        ),
        f"- The best score here is {best} ({mean[best]:+.2f}); the paper found LogME best overall. "
        "With four models a single swapped pair moves τ by up to about 0.5, and the fine-tuned "
        "accuracies the ranking is taken from differ by a few test images (std over seeds in the "
        "table), so differences between scores below ~0.3 are not evidence.",
    ]


def markdown(frame: pd.DataFrame, digits: int = 3, index: str = "") -> str:
    head = f"| {index} | " + " | ".join(map(str, frame.columns)) + " |"
    lines = [head, "|" + "---|" * (len(frame.columns) + 1)]
    for label, row in frame.iterrows():
        cells = ["—" if pd.isna(v) else f"{v:+.{digits}f}" for v in row]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_table() -> str:
    columns = ("logme", "leep")
    lines = ["| data set (paper) | " + " | ".join(columns) + " |", "|---|---|---|"]
    for dataset, values in PAPER_TAU.items():
        cells = [f"{values[c]:+.3f}" if c in values else "—" for c in columns]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wall_time(uri: str) -> float:
    """Hours from the first run's start to the last run's end, over both experiments."""
    frame = search(Query(uri, (EXPERIMENT, SCORES_EXPERIMENT), kind=None))
    return (frame["end_time"].max() - frame["start_time"].min()).total_seconds() / 3600


def headline(r: pd.DataFrame, tau: pd.DataFrame) -> list[str]:
    lines = []
    for strategy, name in PROTOCOLS.items():
        sub = r[r["strategy"] == strategy].set_index("dataset")["r"]
        if sub.empty:
            lines.append(f"- {name}: not measured.")
            continue
        per_target = sub.drop("average log-odds").dropna()
        average = sub["average log-odds"]
        verdict = "yes" if average >= 0.5 else ("no" if average <= 0 else "only weakly")
        lines.append(
            f"- {name}: **{verdict}, r = {average:+.2f}** on the log-odds averaged over "
            f"the data sets (Kornblith et al.: 0.99 fixed features, 0.96 fine-tuned); "
            f"per data set r > 0 on {int((per_target > 0).sum())} of {len(per_target)} "
            f"(median {per_target.median():+.2f})."
        )
    if len(tau):
        mean = tau.loc["mean (not at the ceiling)"]
        ranked = ", ".join(f"{s} {mean[s]:+.2f}" for s in mean.sort_values(ascending=False).index)
        lines.append(
            f"- **Weighted Kendall τ against the fine-tuned ranking of the four, mean over the "
            f"targets not at the ceiling:** {ranked} "
            "(LogME in TLlib's table: +0.50 to +0.79 over 10 models on 8 data sets)."
        )
    return lines


def notes(acc: pd.DataFrame) -> list[str]:
    fixed, tuned = mean_acc(acc, "feature_extract"), mean_acc(acc, "partial")
    both = fixed.stack().to_frame("fixed").join(tuned.stack().to_frame("tuned"), how="inner")
    lines = [
        f"- Fine-tuned beat fixed features in {int((both['tuned'] > both['fixed']).sum())} of "
        f"{len(both)} (target, backbone) cells (Kornblith et al.: fine-tuning wins at full data; "
        "here 15 images per class and 40 steps)."
    ]
    at_ceiling = ceiling(acc)
    if at_ceiling:
        lines.append(
            f"- At the ceiling (two or more backbones fine-tune to 100 %): {', '.join(at_ceiling)}; "
            "its τ is shown but left out of the mean, its r is undefined where all four tie."
        )
    left = missing(acc)
    if left:
        lines.append(
            f"- **Not finished by the deadline** (fine-tuning runs of the 3-seed design): "
            f"{'; '.join(left)}. Cells show their seed count (n)."
        )
    return lines


def main() -> None:
    uri = os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/outputs/backbone_choice/mlflow.db"
    )
    top1, source = imagenet_top1()
    layout = Layout(
        rows=("backbone",), columns=("dataset", "strategy"), metric="test/acc",
        row_order=BACKBONES,
    )  # fmt: skip
    report = Report(
        Query(uri, (EXPERIMENT,), {}, "FINISHED"), layout, output_dir=HERE, stem="table",
        title="Test accuracy (%) per backbone: fixed features (feature_extract) and fine-tuned "
        "(partial), mean ± std over seeds",
        plots={"imagenet_vs_transfer": {"line": "strategy", "panel": "dataset", "top1": top1}},
        experiment="reports", run_name=f"report-{EXPERIMENT}",
        artifact_location=str(ROOT / "mlartifacts"),
        labels={"feature_extract": "fixed features", "partial": "fine-tuned", **SHORT},
    )  # fmt: skip
    write_report(report)
    acc = accuracies(uri)
    test_size = int(os.environ.get("TEST_IMAGES", "200"))  # 20 per class (conf/experiment)
    r = correlations(acc, top1, test_size)
    tau = taus(acc, scores(uri))
    seeds = acc[acc["strategy"] == "partial"].groupby(["dataset", "backbone"]).size()
    r_table = r.pivot(index="dataset", columns="strategy", values="r").rename(columns=PROTOCOLS)
    lines = [
        "# Which pretrained model? Results",
        "",
        f"{len(acc)} finished training runs in MLflow experiment `{EXPERIMENT}` and the "
        f"transferability scores in `{SCORES_EXPERIMENT}` (store "
        f"`{uri.split('///')[-1].replace(str(ROOT) + '/', '')}`), {wall_time(uri):.2f} h from the "
        f"first run's start to the last run's end. Fine-tuned: {seeds.min() if len(seeds) else 0}–"
        f"{seeds.max() if len(seeds) else 0} seeds per cell. Protocol and caps: [README.md](README.md). "
        "Regenerate everything: `bash experiments/backbone_choice/run.sh`; only this page: "
        "`.venv/bin/python experiments/backbone_choice/results.py`.",
        "",
        f"ImageNet top-1 (conf/imagenet_top1.yaml; source: {source}): "
        + ", ".join(f"{SHORT[b]} {top1[b]}" for b in BACKBONES)
        + ".",
        "",
        "## Headline: did better ImageNet models transfer better here?",
        "",
        *headline(r, tau),
        *notes(acc),
        "",
        "## (a) Kornblith et al. 2019: transfer accuracy against ImageNet top-1",
        "",
        "Also as [LaTeX](table.tex) ([compilable](table_document.tex)) and [CSV](table.csv); bold: "
        "the best backbone in each column.",
        "",
        (HERE / "table.md").read_text().strip(),
        "",
        "Pearson r between logit(ImageNet top-1) and logit(test accuracy) over the four backbones "
        "(accuracy: mean over seeds; 'average log-odds': the log-odds averaged over data sets "
        "first, as in the paper's Figure 1):",
        "",
        markdown(r_table, 2, "data set"),
        "",
        "![ImageNet top-1 against transfer accuracy](imagenet_vs_transfer.png)",
        "",
        "## (b) You et al. 2021: do the scores computed before training rank the backbones?",
        "",
        "Weighted Kendall τ of each score (on the 15 training images per class, before any "
        "training) against the backbones' mean fine-tuned test accuracy; +1: the same order.",
        "",
        markdown(tau, 2, "data set"),
        "",
        "Published values (10 ImageNet models per data set; ../shared/LITERATURE.md):",
        "",
        paper_table(),
        "",
        "Where ours agrees and where it differs:",
        "",
        *agreement(tau),
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
