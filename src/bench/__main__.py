"""`python -m src.bench SUITE ...`: one table of side-by-side ratios, plus JSON.

overhead     the training step inside train(cfg) of the composed job (default: the default job;
             every default callback, the MLflow logger, the progress bar) against a raw PyTorch
             loop over the same model, data, optimizer and precision. Goal >= 0.95 CPU, >= 0.98 GPU.
freeze       partial (all but the last stage frozen) against full fine-tuning; goal >= 1.5 on CPU.
prefix_cache 10-epoch partial (all but the last two stages frozen) and linear_probe runs, prefix
             cache off against on (cold), augmentation none; goal >= 5.
probe_cache  10-epoch linear_probe run (uncached) against a feature_extract run (cold cache);
             goal >= 9. Feature extraction against raw batched inference of the backbone; >= 0.9.
data         training-loader throughput (model-ready, on the device) against the model's step
             throughput, for the default job and an image folder; goal >= 1.2.
startup      `src.train --help` against its 3 s budget; import and first-step times reported.
pruning      one Optuna study without and with a pruner: epochs spent (goal >= 2x fewer), best value
             (goal: within 0.5 points). Not part of `make bench` (it runs two sweeps).
gpu          overhead, freeze, probe_cache and data at ResNet-50 scale (224 px, batch 256,
             bf16-mixed, channels_last, compile, cudnn.benchmark) on a lent GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from src.backbones.offline import OFFLINE_BACKBONES, PACKAGED_WEIGHTS
from src.bench import jobs, steps
from src.bench.overhead import suite_overhead

CPU_SUITES = ("overhead", "freeze", "prefix_cache", "probe_cache", "data", "startup")
SUITES = (*CPU_SUITES, "gpu", "strategies", "pruning")


def run_suites(names: list[str], args):
    """Yields each suite's rows as it finishes."""
    on_gpu = args.device.type == "cuda"
    setup = steps.StepSetup(
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        pretrained_weights="package" if args.backbone in PACKAGED else None,
    )
    job = args.job_overrides
    timing = (args.steps, args.warmup, args.rounds)
    for name in names:
        rows = []
        if name == "overhead":
            rows += suite_overhead(job, *timing, goal=0.98 if on_gpu else 0.95)
        elif name == "freeze":
            rows += steps.suite_freeze(setup, *timing, goal=1.5)
        elif name == "prefix_cache":
            rows += jobs.suite_prefix_cache(job, goal=5.0)
        elif name == "probe_cache":
            rows += jobs.suite_probe_cache(job, goal=9.0)
        elif name == "data":
            rows += jobs.suite_data(job, setup, epochs=args.data_epochs, goal=1.2)
        elif name == "startup":
            rows += jobs.suite_startup()
        elif name == "pruning":
            from src.bench.pruning import suite_pruning

            rows += suite_pruning(args)
        yield rows


PACKAGED = (*PACKAGED_WEIGHTS, *OFFLINE_BACKBONES)


def gpu_defaults(args) -> None:
    """The issue's GPU protocol: ResNet-50, 224 px, batch 256, bf16-mixed, channels_last, compile,
    cudnn.benchmark set explicitly; real Fashion-MNIST images held in memory for the job suites."""
    if args.device.type != "cuda":
        raise SystemExit(
            "gpu: no CUDA device here. Run it on a GPU machine (see README, Benchmarks)."
        )
    torch.backends.cudnn.benchmark = True
    args.backbone, args.image_size, args.batch_size = "resnet50", 224, 256
    args.precision, args.channels_last, args.compile = "bf16-mixed", True, True
    args.job_overrides = [
        "backbone=resnet50",
        "backbone.pretrained=false",
        "trainer=gpu",
        "callbacks.speed.compile=true",
        "dataset.batch_size=256",
        "dataset.num_workers=8",
        *args.job_overrides,
    ]


def print_table(rows: list[dict]) -> None:
    print(f"\n{'suite':<12} {'ratio':>7} {'goal':>6}  {'a':>9} {'b':>9}  measure")
    for r in rows:
        x = "" if r["unit"] == "points" else "x"  # a difference, not a ratio
        goal = "-" if r["goal"] is None else f"{r['goal']:.2f}{x}"
        verdict = {None: "", True: "ok", False: "BELOW GOAL"}[r["ok"]]
        print(
            f"{r['suite']:<12} {r['ratio']:>6.2f}{x} {goal:>6}  {r['a']:>9.2f} {r['b']:>9.2f}  "
            f"{r['measure']} [{r['unit']}] {verdict}"
        )


def check_knobs(parser: argparse.ArgumentParser, args) -> None:
    """Ranges argparse's types do not check, and the results' place, before any suite runs."""
    from src.errors import InvalidInput
    from src.outputs import check_output_file, check_output_folder

    least = {"image_size": 8, "batch_size": 1, "steps": 1, "warmup": 0, "rounds": 1}
    least |= {"data_epochs": 1, "trials": 1, "epochs": 1, "train_batches": 1, "seed": 0}
    for key, low in least.items():
        if getattr(args, key) < low:
            parser.error(f"--{key.replace('_', '-')}={getattr(args, key)}: must be >= {low}")
    try:
        if args.json is not None:
            check_output_file(args.json, "--json")
        else:
            check_output_folder(args.output_dir, "--output-dir")
    except InvalidInput as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suites", nargs="+", choices=SUITES)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="freeze")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--precision", default=None, help="default: bf16-mixed on GPU, else 32-true"
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data-epochs", type=int, default=2, help="data: timed loader epochs")
    parser.add_argument(
        "--job",
        dest="job_overrides",
        action="append",
        default=[],
        help="overhead, prefix_cache, probe_cache, data: a Hydra override of the job (repeatable); default: the "
        "default job",
    )
    parser.add_argument("--dataset", default="digits", help="pruning: a dataset config")
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
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs/bench"),
        help="where <time>.json goes, relative to the current folder (default outputs/bench)",
    )
    parser.add_argument("--json", type=Path, help="write the rows to this file instead")
    args = parser.parse_args(argv)
    check_knobs(parser, args)
    os.environ.setdefault("PROJECT_ROOT", str(jobs.PROJECT_ROOT))
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16-mixed" if args.device.type == "cuda" else "32-true")

    names = list(args.suites)
    if "strategies" in names:  # the strategies issue's pair
        names = [n for n in names if n != "strategies"] + ["freeze", "probe_cache"]
    if "gpu" in names:
        gpu_defaults(args)
        names = [n for n in names if n != "gpu"] + ["overhead", "freeze", "probe_cache", "data"]
    names = list(dict.fromkeys(names))

    device = torch.cuda.get_device_name() if args.device.type == "cuda" else "cpu"
    report = {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or args.output_dir / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for suite_rows in run_suites(names, args):  # written as each suite ends: a kill keeps the rest
        rows += suite_rows
        print_table(suite_rows)
        path.write_text(json.dumps({**report, "rows": rows}, indent=1))
    print(f"\nAll suites on {device} ({report['threads']} threads, torch {torch.__version__}):")
    print_table(rows)
    from src.tracking.store import done_line

    print(done_line(None, path))  # the last line, as every entry point's: no run, the JSON
    return 1 if any(r["ok"] is False for r in rows) and os.environ.get("BENCH_STRICT") else 0


if __name__ == "__main__":
    from src.cli import guarded

    sys.exit(guarded(main)())
