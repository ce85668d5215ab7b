"""`python -m src.advise dataset=digits budget=15m` (conf/advise.yaml): from a data set to a
recommended backbone, strategy, hyperparameters and data size, with the evidence.

Stages, under one MLflow parent run (tag kind=advise): 1. rank the candidate backbones by
transferability (src.similarity), keep the top k; 2. an Optuna study per kept backbone
(src.sweeps); 3. the best configuration at several data fractions and seeds, a fitted learning
curve; 4. RESULTS.md with the ranking, Kendall tau, the plot and the command reproducing the
winner. Re-running the same command continues: ranking cached, studies resumed, runs reused.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.cli import entry_point  # stdlib only: the clock below still counts the heavy imports

# The budget's clock: the heavy imports (torch, timm, MLflow) and the checks come after, and count.
STARTED = time.monotonic()

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"

log = logging.getLogger(__name__)
# What trials can be ranked by (maximised): every run's validation scores that rise when it improves.
SEARCH_METRICS = ("val/acc", "val/balanced_acc", "val/f1_macro", "val/auroc")


def check(cfg: DictConfig) -> None:
    """Everything a researcher can get wrong, refused before any run or study exists."""
    import timm

    from src.advise.jobs import backbone_overrides, compose
    from src.config import instantiate_node
    from src.similarity.ranking import COLUMNS

    known = sorted(p.stem for p in (CONF_DIR / "dataset").glob("[!_]*.yaml"))
    if cfg.dataset_name not in known:
        raise ValueError(f"dataset={cfg.dataset_name!r}: unknown; choose one of {known}.")
    if not cfg.candidates or cfg.top_k < 1:
        raise ValueError("candidates must name at least one backbone and top_k must be >= 1.")
    if cfg.metric not in SEARCH_METRICS:
        raise ValueError(
            f"metric={cfg.metric!r}: choose one of {list(SEARCH_METRICS)} (maximised)."
        )
    if cfg.rank.score not in COLUMNS:
        raise ValueError(f"rank.score={cfg.rank.score!r}: choose one of {list(COLUMNS)}.")
    fractions = list(cfg.data.fractions)
    if not fractions or max(fractions) != 1.0 or min(fractions) <= 0 or not cfg.data.seeds:
        raise ValueError(f"data.fractions={fractions}: in (0, 1], with 1.0; data.seeds non-empty.")
    if cfg.target_acc is not None and not 0 < cfg.target_acc < 1:
        raise ValueError(f"target_acc={cfg.target_acc}: an accuracy in (0, 1), or null.")
    choices = list(cfg.search.params.strategy.choices)
    unknown = sorted(set(cfg.search.enqueue) - set(choices)) + sorted(
        set(choices) - set(cfg.search.cost)
    )
    if unknown:
        raise ValueError(
            f"search: {unknown} must be strategy choices, each with a search.cost factor."
        )
    backbones = sorted(p.stem for p in (CONF_DIR / "backbone").glob("[!_]*.yaml"))
    for name in cfg.candidates:
        if name not in backbones and not timm.is_model(name):
            raise ValueError(
                f"candidates: {name!r} is neither a conf/backbone ({backbones}) nor a timm model."
            )
        train_cfg = compose("train", [*backbone_overrides(name), f"dataset={cfg.dataset_name}"])
        # weights that cannot be had here: refused now
        instantiate_node(train_cfg.backbone, num_classes=2)


def locations(cfg: DictConfig) -> list[str]:
    """Overrides sending every job's runs, caches and outputs where the advisor's go."""
    paths = cfg.paths
    return [
        f"experiment_name={cfg.experiment_name}",
        f"paths.root_dir='{paths.root_dir}'",
        f"paths.tracking_uri='{paths.tracking_uri}'",
        f"paths.artifact_location='{paths.artifact_location}'",
    ]


def settings(cfg: DictConfig, data: list[str] = ()) -> dict:
    """What the advice key hashes: a re-run with the same settings (any budget) continues."""
    keys = (
        "dataset_name",
        "candidates",
        "top_k",
        "seed",
        "rank",
        "search",
        "data",
        "train_overrides",
    )
    chosen = {k: OmegaConf.to_container(cfg, resolve=True)[k] for k in keys}
    chosen["search"] = {k: v for k, v in chosen["search"].items() if k != "storage"}
    if (
        data
    ):  # another folder or other sizes are another advice (absent: the keys stay as they were)
        chosen["dataset_overrides"] = list(data)
    return chosen


def advise(cfg: DictConfig) -> Path:
    """The advice's RESULTS.md."""
    return advise_run(cfg)[0]


def advise_run(cfg: DictConfig) -> tuple[Path, str]:
    """(the advice's RESULTS.md, its MLflow parent run id)."""
    from src.advise.budget import Budget
    from src.advise.jobs import compose, dataset_overrides
    from src.advise.tracking import advice_key, parent_run
    from src.config import instantiate_node
    from src.errors import refuse_bad_input
    from src.tracking.runs import log_params

    # The user's data set node as given (root, sizes, fractions ...): every job gets all of it.
    given = OmegaConf.to_container(cfg.dataset, resolve=False) if cfg.get("dataset") else {}
    OmegaConf.resolve(cfg)  # ${hydra:...} now, before jobs swap HydraConfig for their own
    with refuse_bad_input():
        budget = Budget.parse(cfg.budget, started=STARTED if __name__ == "__main__" else None)
        check(cfg)
        data = dataset_overrides(cfg.dataset_name, given)
        train_cfg = compose("train", [f"dataset={cfg.dataset_name}", *data])  # a bad key: now
        # A missing folder, too few classes, a class emptied by the sizes: refused now too, not
        # by the first job, once the advice's MLflow run exists.
        instantiate_node(train_cfg.dataset).splits  # noqa: B018
    if data:
        log.info("Every job gets the data set's overrides: %s", " ".join(data))
    key = advice_key(settings(cfg, data))
    tags = {"dataset": cfg.dataset_name, "budget": str(cfg.budget)}
    with parent_run(
        cfg.paths.tracking_uri, cfg.experiment_name, cfg.paths.artifact_location, key, tags
    ) as (client, parent):
        client.set_tag(parent, "budget", str(cfg.budget))
        log_params(client, parent, settings(cfg, data))  # the same on a re-run: they make the key
        from src.advise.stages import Stages

        report = Stages(cfg, budget, client, parent, key, locations(cfg), data).run()
    from src.tracking.store import done_line

    log.info(done_line(parent, report.parent, cfg.paths.tracking_uri))  # RESULTS.md is there
    return report, parent


@entry_point("advise", stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri})
def main(cfg: DictConfig) -> None:
    advise(cfg)


def refuse_unknown_dataset(argv: list[str]) -> None:
    """`dataset` is a config group, so Hydra itself would refuse an unknown or missing one, in
    several lines and with exit 1, before main(): refused here the project's way instead."""
    known = sorted(p.stem for p in (CONF_DIR / "dataset").glob("[!_]*.yaml"))
    given = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+") == "dataset"]
    if any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in argv):
        return
    if not given or given[-1] not in known:
        what = f"dataset={given[-1]!r}: unknown" if given else "dataset is required"
        print(f"Invalid input: {what}; choose one of {known}.", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    refuse_unknown_dataset(sys.argv[1:])
    main()
