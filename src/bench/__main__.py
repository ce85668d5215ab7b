"""`python -m src.bench strategies` (= freeze + probe_cache): one table plus JSON.

freeze       training-step throughput, all but the last stage frozen (`partial`, freeze_stages=-1)
             against full fine-tuning, same model, batch and optimizer; goal >= 1.5x on CPU.
probe_cache  wall time of a 10-epoch linear_probe run against a feature_extract run (cold cache,
             backbone run once, torch linear head for the same 10 epochs); goal >= 10x.
pruning      the same Optuna study (space, sampler seed, trial count) run without a pruner and with
             one: total epochs trained (goal: at most half) and best value (goal: within 0.5 points).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def step_throughput(
    backbone: str, strategy, batch: int, size: int, steps: int, rounds: int
) -> float:
    """Images per second of forward + backward + AdamW step under `strategy` (median of rounds)."""
    from src.backbones import create_backbone
    from src.models.module import build_optimizer

    torch.manual_seed(0)
    model = create_backbone(backbone, num_classes=10, weights="package", input_size=[3, size, size])
    optimizer = build_optimizer(functools.partial(torch.optim.AdamW, lr=1e-3), strategy, model)
    model.train()
    strategy.apply(model, optimizer.param_groups, epoch=0)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    criterion = torch.nn.CrossEntropyLoss()

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            criterion(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return batch * n / (time.perf_counter() - start)

    run(2)  # warm-up: allocator, optimizer state
    return statistics.median(run(steps) for _ in range(rounds))


def suite_freeze(args) -> list[dict]:
    from src.strategies import Finetune, Partial

    rows = []
    results = {"finetune": [], "partial": []}
    for _ in range(args.rounds):  # interleaved, so drift hits both alike
        results["finetune"].append(
            step_throughput(
                args.backbone, Finetune(), args.batch_size, args.image_size, args.steps, 1
            )
        )
        results["partial"].append(
            step_throughput(
                args.backbone,
                Partial(freeze_stages=-1),
                args.batch_size,
                args.image_size,
                args.steps,
                1,
            )
        )
    full, partial = statistics.median(results["finetune"]), statistics.median(results["partial"])
    rows.append(
        {
            "suite": "freeze",
            "measure": f"partial(all but last stage) / finetune img/s, {args.backbone} {args.image_size}px b{args.batch_size}",
            "a": partial,
            "b": full,
            "ratio": partial / full,
            "goal": 1.5,
            "unit": "img/s",
        }
    )
    return rows


def timed_train(overrides: list[str], root: Path) -> float:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from src.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(PROJECT_ROOT / "conf")):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(root), str(root / "run")
        del cfg.hydra
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def suite_probe_cache(args) -> list[dict]:
    common = [
        f"dataset={args.dataset}",
        f"backbone.input_size=[3,{args.image_size},{args.image_size}]",
        "trainer.max_epochs=10",
        "logger=none",
        "test=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.model_checkpoint.save_last=false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        probe = timed_train([*common, "strategy=linear_probe"], Path(tmp) / "probe")
        cache = Path(tmp) / "cache"  # cold: the feature run pays for its one extraction
        extract = timed_train(
            [
                *common,
                "strategy=feature_extract",
                "strategy.classifier=linear",
                f"strategy.cache_dir={cache}",
            ],
            Path(tmp) / "features",
        )
    return [
        {
            "suite": "probe_cache",
            "measure": f"linear_probe / feature_extract wall time, 10 epochs, {args.dataset}",
            "a": probe,
            "b": extract,
            "ratio": probe / extract,
            "goal": 10.0,
            "unit": "s",
        }
    ]


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
        {
            "suite": "pruning",
            "measure": f"epochs without / with pruning ({setting})",
            "a": full["epochs"],
            "b": pruned["epochs"],
            "ratio": full["epochs"] / pruned["epochs"],
            "goal": 2.0,
            "unit": "epochs",
        },
        {
            "suite": "pruning",
            "measure": "best value with - without pruning, points (goal: > -0.5)",
            "a": 100 * pruned["best"],
            "b": 100 * full["best"],
            "ratio": gap,
            "goal": -0.5,
            "unit": "points",
            "ok": gap >= -0.5,
        },
    ]


SUITES = {
    "freeze": [suite_freeze],
    "probe_cache": [suite_probe_cache],
    "strategies": [suite_freeze, suite_probe_cache],
    "pruning": [suite_pruning],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suites", nargs="+", choices=sorted(SUITES))
    parser.add_argument(
        "--backbone",
        default="tf_efficientnet_lite0",
        help="freeze: a backbone with packaged weights",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="freeze: steps per timing round")
    parser.add_argument("--rounds", type=int, default=3, help="freeze: interleaved rounds (median)")
    parser.add_argument("--dataset", default="digits", help="probe_cache: a dataset config")
    parser.add_argument("--space", default="lr_wd", help="pruning: a conf/hparams_search file")
    parser.add_argument(
        "--pruner",
        default="successive_halving",
        choices=["median", "successive_halving", "hyperband"],
    )
    parser.add_argument("--trials", type=int, default=12, help="pruning: trials per study")
    parser.add_argument("--epochs", type=int, default=6, help="pruning: max epochs per trial")
    parser.add_argument("--train-batches", type=int, default=4, help="pruning: batches per epoch")
    parser.add_argument("--seed", type=int, default=0, help="pruning: sampler and training seed")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))

    rows = [row for name in args.suites for suite in SUITES[name] for row in suite(args)]
    print(f"\n{'suite':<12} {'ratio':>7} {'goal':>6}  {'a':>9} {'b':>9}  measure")
    for row in rows:
        ok = "ok" if row.get("ok", row["ratio"] >= row["goal"]) else "BELOW"
        x = "" if row["unit"] == "points" else "x"  # a difference, not a ratio
        print(
            f"{row['suite']:<12} {row['ratio']:>6.2f}{x} {row['goal']:>5.1f}{x}  {row['a']:>9.2f} "
            f"{row['b']:>9.2f}  {row['measure']} [{row['unit']}] {ok}"
        )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu x{torch.get_num_threads()} threads"
    )
    print(json.dumps({"device": device, "rows": rows}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
