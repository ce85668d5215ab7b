"""The advisor-regret study's jobs (issue #31), run resumably by experiments/study_jobs.py:
`plan.py --worker 0` and `--worker 1` (run.sh starts both), `plan.py --list` prints them.

Per target:
1. LogME scores of the four backbones (the LogME-best baseline);
2. the exhaustive grid over the advisor's own search space, seed 0: every candidate backbone x
   every strategy it searches x three values of that strategy's learning rate (fixed features:
   of C), each trained exactly as the advisor trains a configuration on all the data
   (src.advise.stages.job_overrides, test=true);
3. seeds 1 and 2 of each (backbone, strategy) at its value best on validation (resolved when the
   job starts, from the seed-0 runs), so the oracle's accuracy has an interval;
4. `python -m src.advise` at 10, 20 and 50 % of the target's measured grid compute (resolved when
   the job starts), advisor seeds 0, 1, 2.
Random search and the two baselines are replayed on the grid's runs by results.py (no jobs).

Environment (all optional): TARGETS, BACKBONES, STRATEGIES (a slice of the space: the advisor
searches the same slice), ADVISOR_SEEDS, BUDGETS (fractions of the grid's compute), EXTRA (overrides added to every training job, e.g. trainer.limit_train_batches=2 for a smoke
test), OUT (output folder).
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_jobs import ROOT, StudyJob, main  # noqa: E402

OUT = Path(os.environ.get("OUT", ROOT / "outputs" / "advisor_regret"))
TARGETS = os.environ.get("TARGETS", "digits,textures,fashion_mnist")
ADVISOR_SEEDS = os.environ.get("ADVISOR_SEEDS", "0,1,2")
BUDGETS = os.environ.get("BUDGETS", "0.1,0.2,0.5")
EXTRA = tuple(os.environ.get("EXTRA", "").split())
GRID = "advisor_regret_grid"  # the grid runs' MLflow experiment
SCORES = "advisor_regret_scores"
# The advisor's candidates (conf/advise.yaml); BACKBONES / STRATEGIES: a slice of the space, which
# the advisor's jobs then search too.
ALL_BACKBONES = "mobilenetv2,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
BACKBONES = tuple(os.environ.get("BACKBONES", ALL_BACKBONES).split(","))
# The advisor's strategies (conf/advise.yaml search.params.strategy) and the parameter the grid
# steps for each, three values inside the advisor's own range; the others stay at the strategy's
# defaults (backbone_lr_mult 0.1, probe_epochs 2, layer decay 0.75 ...).
STEPPED = {
    "feature_extract": ("strategy.C", (0.1, 1.0, 10.0)),
    "linear_probe": ("optimizer.lr", (3e-4, 1e-3, 3e-3)),
    "lp_ft": ("optimizer.lr", (3e-4, 1e-3, 3e-3)),
    "finetune": ("optimizer.lr", (3e-4, 1e-3, 3e-3)),
    "layer_decay": ("optimizer.lr", (3e-4, 1e-3, 3e-3)),
}
STRATEGIES = tuple(os.environ.get("STRATEGIES", ",".join(STEPPED)).split(","))
# 100 training images per class (+ 20 for validation) on every target, the same images for every
# job (dataset.seed); test: every image left (digits 539, textures 384 patches of 32 px) or, for
# Fashion-MNIST, 200 per class of the official test split (2,000: each of ~100 runs tests them).
DATA = {
    "digits": ("dataset.test_fraction=0.3",),
    "textures": ("dataset.source.patch_size=32", "dataset.test_fraction=0.5"),
    "fashion_mnist": ("dataset.test_samples_per_class=200",),
}
COMMON_DATA = (
    "dataset.samples_per_class=120",
    "dataset.val_fraction=0.1667",
    "dataset.seed=0",
    "dataset.num_workers=0",
)


# conf/advise.yaml's train_overrides (what every advisor job adds), for a smoke test's EXTRA.
ADVISOR_TRAIN = (
    "trainer.enable_model_summary=false",
    "logger.mlflow.log_model=false",
    "dataset.num_workers=0",
)


def data_overrides(target: str) -> tuple[str, ...]:
    return (*COMMON_DATA, *DATA.get(target, ()))


@cache
def advisor_config(target: str):
    """conf/advise.yaml for the target, as every advisor job of the study composes it."""
    from src.config import compose

    return compose([f"dataset={target}", *data_overrides(target)], "advise")[0]


def grid_overrides(target: str, backbone: str, strategy: str, value: float, seed: int):
    """A configuration trained on all the data exactly as the advisor's data stage trains it."""
    from src.advise.stages import job_overrides
    from src.sweeps.space import to_overrides

    key, _ = STEPPED[strategy]
    cfg = advisor_config(target)
    return (
        *job_overrides(cfg, backbone, True, list(data_overrides(target))),
        *to_overrides({"strategy": strategy, key: value}),
        f"seed={seed}",
        f"experiment_name={GRID}",
        "trainer.enable_progress_bar=false",
        *EXTRA,
    )


def advisor_space() -> tuple[str, ...]:
    """The advisor's candidates and strategies when the study runs on a slice of the space."""
    space = ()
    if not set(ALL_BACKBONES.split(",")) <= set(BACKBONES):
        space += (f"candidates=[{','.join(BACKBONES)}]", f"top_k={min(2, len(BACKBONES))}")
    if not set(STEPPED) <= set(STRATEGIES):
        chosen = ",".join(STRATEGIES)
        space += (f"search.params.strategy.choices=[{chosen}]", f"search.enqueue=[{chosen}]")
    if EXTRA:  # a smoke test's cut-down training reaches the advisor's jobs too
        space += ("train_overrides=[" + ",".join(f"'{o}'" for o in ADVISOR_TRAIN + EXTRA) + "]",)
    return space


def best_value_of(target: str, backbone: str, strategy: str):
    """resolve(): the stepped parameter at its value best on validation (seed-0 grid runs)."""

    def resolve() -> tuple[str, ...]:
        from mlflow import MlflowClient

        from src.tracking.runs import best_metric

        key, values = STEPPED[strategy]
        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(GRID)
        scored = []
        for index, value in enumerate(values):
            name = grid_name(target, backbone, strategy, index)
            runs = client.search_runs(
                [experiment.experiment_id],
                f"tags.output_dir LIKE '%/{name}' and attributes.status = 'FINISHED'",
                max_results=1,
            )
            score = best_metric(client, runs[0].info.run_id) if runs else None
            if score is not None:
                scored.append((score, -index, value))
        if not scored:
            raise RuntimeError(f"no finished seed-0 grid run of {target} {backbone} {strategy}")
        return (f"{key}={max(scored)[2]!r}",)

    return resolve


def grid_seconds(target: str):
    """Seconds of every finished grid run of the target (start to end, one job per core)."""
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(GRID)
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.dataset = '{target}' and attributes.status = 'FINISHED'",
    )
    from src.report.regret import run_seconds  # as results.py counts them (resumes too)

    return sum(run_seconds(runs).values())


def budget_of(target: str, fraction: float):
    def resolve() -> tuple[str, ...]:
        return (f"budget={round(fraction * grid_seconds(target))}s",)

    return resolve


def grid_name(target: str, backbone: str, strategy: str, index: int) -> str:
    return f"grid-{target}-{backbone}-{strategy}-v{index}"


def jobs() -> list[StudyJob]:
    """Every target's scores, seed-0 grid and seeds at the best values; then the advices (each
    waits for its target's whole grid, so the grids come first: a worker never idles on an advice
    while grid runs are left, and the ground truth of every target is in before any advice)."""
    plan, advices = [], []
    for target in TARGETS.split(","):
        data = data_overrides(target)
        for backbone in BACKBONES:
            plan.append(
                StudyJob(
                    f"scores-{target}-{backbone}",
                    (
                        f"dataset={target}",
                        f"backbone={backbone}",
                        *data,
                        "max_per_class=null",
                        "estimators=[logme]",
                        f"experiment_name={SCORES}",
                    ),
                    "similarity",
                )
            )
        seeded = []
        for backbone in BACKBONES:
            for strategy in STRATEGIES:
                _, values = STEPPED[strategy]
                names = []
                for index, value in enumerate(values):
                    names.append(grid_name(target, backbone, strategy, index))
                    overrides = grid_overrides(target, backbone, strategy, value, 0)
                    plan.append(StudyJob(names[-1], overrides))
                for seed in (1, 2):
                    # The stepped value comes from resolve(): the static value is the middle one,
                    # replaced (the last override wins).
                    overrides = grid_overrides(target, backbone, strategy, values[1], seed)
                    seeded.append(
                        StudyJob(
                            f"seed{seed}-{target}-{backbone}-{strategy}",
                            overrides,
                            after=tuple(names),
                            resolve=best_value_of(target, backbone, strategy),
                        )
                    )
        plan += seeded
        grid = tuple(j.name for j in plan if j.config == "train" and f"-{target}-" in j.name)
        for order, fraction in enumerate(float(f) for f in BUDGETS.split(",")):
            for rank, seed in enumerate(ADVISOR_SEEDS.split(",")):
                job = StudyJob(
                    f"advise-{target}-b{fraction:g}-s{seed}",
                    (
                        f"dataset={target}",
                        *data,
                        f"seed={seed}",
                        # Each budget its own advice: the advisor resumes an advice of the
                        # same settings whatever the budget (conf/advise.yaml).
                        f"experiment_name=advisor_regret_b{fraction:g}",
                        f"search.storage=sqlite:///{OUT}/optuna_b{fraction:g}.db",
                        *advisor_space(),
                    ),
                    "advise",
                    after=grid,
                    resolve=budget_of(target, fraction),
                )
                advices.append((order, rank, job))
    # Smallest budget first, each budget's seeds across every target (the sort is stable: targets
    # stay in order): an interrupted study has whole budgets measured on every target (the 10
    # and 20 % goals) before the costly 50 %.
    advices.sort(key=lambda entry: entry[:2])
    return plan + [job for *_, job in advices]


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{OUT}/mlflow.db")
    main(jobs(), OUT)
