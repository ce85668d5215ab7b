"""pruning: the same Optuna study (space, sampler seed, trial count) run without a pruner and with
one: total epochs trained (goal: at most half) and best value (goal: within 0.5 points)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.bench.jobs import PROJECT_ROOT
from src.bench.steps import row


def sweep_study(args, root: Path, pruner: str) -> dict:
    """One `python -m src.train -m hparams_search=...` sweep; its epochs and best value."""
    import optuna

    overrides = [
        f"hparams_search={args.space}",
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.study_name=bench-{pruner}",
        f"seed={args.seed}",
        f"dataset={args.dataset}",
        f"backbone.input_size=[3,{args.image_size},{args.image_size}]",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.limit_train_batches={args.train_batches}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test=false",
        "logger=none",
        "callbacks.model_checkpoint.save_last=false",
        f"paths.root_dir={root}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(PROJECT_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "src.train", "-m", *overrides],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    study = optuna.load_study(
        study_name=f"bench-{pruner}", storage=f"sqlite:///{root}/outputs/optuna.db"
    )
    trials = study.get_trials(deepcopy=False)
    return {
        "pruner": pruner,
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best": study.best_value,
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
        "seconds": time.perf_counter() - start,
    }


def suite_pruning(args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        full = sweep_study(args, Path(tmp) / "none", "none")
        pruned = sweep_study(args, Path(tmp) / args.pruner, args.pruner)
    for run in (full, pruned):
        print(json.dumps(run))
    setting = (
        f"{args.space}, {args.trials} trials x {args.epochs} epochs, {args.dataset} "
        f"{args.image_size}px, seed {args.seed}, {args.pruner} vs none"
    )
    gap = 100 * (pruned["best"] - full["best"])  # points of the monitored metric
    return [
        row(
            "pruning",
            f"epochs without / with pruning ({setting})",
            full["epochs"],
            pruned["epochs"],
            2.0,
            "epochs",
        ),
        {
            **row(
                "pruning",
                "best value with - without pruning, points (goal: > -0.5)",
                100 * pruned["best"],
                100 * full["best"],
                None,
                "points",
            ),
            "ratio": gap,
            "goal": -0.5,
            "ok": gap >= -0.5,
        },
    ]
