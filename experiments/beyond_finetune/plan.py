"""The beyond-fine-tuning study's jobs, run resumably by experiments/study_jobs.py:
`plan.py --worker 0` and `--worker 1` (run.sh starts both), `plan.py --list` prints them.

Per data size and seed: seven training runs (fine-tuning at three learning rates, LP-FT, EMA,
LoRA, BitFit), three post-hoc models of the plain fine-tuned run (WiSE-FT, the greedy soup of the
learning-rate sweep, temperature scaling) and the evaluations: TTA on the clean test split, every
model on the corrupted test split (distribution shift).

Environment (all optional): SIZES (per-class:epochs:batch triples), SEEDS (comma list), SHIFT (the
shifted data set), EXTRA (overrides added to every training job, e.g. trainer.limit_train_batches=2
for a smoke test), EVAL_EXTRA (added to the shifted evaluations, e.g.
dataset.test_samples_per_class=20), OUT (output folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_jobs import ROOT, StudyJob, main  # noqa: E402

OUT = Path(os.environ.get("OUT", ROOT / "outputs" / "beyond_finetune"))
# Training images per class : epochs : batch size. 100/class: 15 epochs of 32 (~470 steps);
# 1,000/class: 4 epochs of 64 (~630 steps). Validation: 20 and 100 more images per class.
SIZES = os.environ.get("SIZES", "100:15:32 1000:4:64")
SEEDS = os.environ.get("SEEDS", "0,1,2")
SHIFT = os.environ.get("SHIFT", "fashion_mnist_corrupted")
EXTRA = tuple(os.environ.get("EXTRA", "").split())
EVAL_EXTRA = tuple(os.environ.get("EVAL_EXTRA", "").split())  # e.g. a smaller shifted test split
LR = "1e-3"  # the configured AdamW learning rate: plain fine-tuning's
SWEEP = ("3e-4", LR, "3e-3")  # the soup's ingredients: fine-tuning at three learning rates
TTA = "tta=[hflip,five_crop]"  # clothes keep their class when mirrored (digits would not)

# Training method -> its overrides (beside the learning rate, which is the configured one).
TRAINED = {
    "lp_ft": ("strategy=lp_ft",),  # probe_epochs: a quarter of the epochs (jobs() sets it)
    "ema": ("averaging=ema",),  # decay from the run's length (conf/averaging/ema.yaml)
    "lora": ("strategy=lora",),
    "bitfit": ("strategy=bitfit",),
}
# Post-hoc models of the plain fine-tuned run (src.posthoc).
POSTHOC = ("wise_ft", "soup", "calibrated")


def validation(per_class: int) -> int:
    """Validation images per class: a tenth of the training images, at least 20."""
    return max(20, per_class // 10)


def training(per_class: int, epochs: int, batch: int, seed: str) -> dict[str, StudyJob]:
    """The seven training runs of one data size and seed, by method name."""
    pool = per_class + validation(per_class)
    base = (
        "experiment=beyond_finetune",
        f"seed={seed}",
        f"dataset.samples_per_class={pool}",
        f"dataset.val_fraction={validation(per_class) / pool:.4f}",
        f"dataset.batch_size={batch}",
        f"trainer.max_epochs={epochs}",
        *EXTRA,
    )
    tag = f"n{per_class}-s{seed}"
    jobs = {
        f"ft_lr{lr}": StudyJob(f"ft_lr{lr}-{tag}", (*base, f"optimizer.lr={lr}")) for lr in SWEEP
    }
    for method, overrides in TRAINED.items():
        extra = (f"strategy.probe_epochs={max(1, epochs // 4)}",) if method == "lp_ft" else ()
        jobs[method] = StudyJob(f"{method}-{tag}", (*base, *overrides, *extra))
    return jobs


def derived(trained: dict[str, StudyJob], tag: str) -> list[StudyJob]:
    """Post-hoc models of the plain fine-tuned run and every evaluation, for one size and seed."""
    plain = f"@run:{trained[f'ft_lr{LR}'].name}"
    sweep = ",".join(f"@run:{trained[f'ft_lr{lr}'].name}" for lr in SWEEP)
    # WiSE-FT interpolates a model fine-tuned FROM its start (the paper: CLIP zero-shot, head
    # included): here the pretrained backbone with a linear probe, LP-FT's own start. From plain
    # fine-tuning (a random head) the path's middle mixes two unrelated heads (README).
    from_probe = f"@run:{trained['lp_ft'].name}"
    jobs = [
        StudyJob(f"wise_ft-{tag}", ("method=wise_ft", f"run_id={from_probe}"), "posthoc"),
        StudyJob(
            f"soup-{tag}", ("method=soup", "method.recipe=greedy", f"run_ids=[{sweep}]"), "posthoc"
        ),
        StudyJob(f"calibrated-{tag}", ("method=calibrate", f"run_id={plain}"), "posthoc"),
        # TTA on the clean test split (the run's own data node: its test split exactly).
        StudyJob(f"tta-{tag}", (f"run_id={plain}", TTA), "eval"),
    ]
    # Every model on the shifted test split; the plain fine-tuned one with and without TTA.
    models = {name: job.name for name, job in trained.items()} | {p: f"{p}-{tag}" for p in POSTHOC}
    for name, job_name in models.items():
        tta = (TTA,) if name == f"ft_lr{LR}" else ()
        shifted = (
            f"run_id=@run:{job_name}",
            f"dataset={SHIFT}",
            "dataset.num_workers=0",
            *tta,
            *EVAL_EXTRA,
        )
        jobs.append(StudyJob(f"shift-{name}-{tag}", shifted, "eval"))
    return jobs


def jobs() -> list[StudyJob]:
    """Seed by seed, the larger size first (its long runs beside the short ones); a seed's post-hoc
    models and evaluations come after the next seed's training, when their runs are finished (an
    interrupted study has every cell at a lower seed count)."""
    plan, pending = [], []
    for seed in SEEDS.split(","):
        finished_before = pending
        pending = []
        for size in sorted(SIZES.split(), key=lambda s: -int(s.split(":")[0])):
            per_class, epochs, batch = (int(x) for x in size.split(":"))
            trained = training(per_class, epochs, batch, seed)
            plan += trained.values()
            pending += derived(trained, f"n{per_class}-s{seed}")
        plan += finished_before
    return plan + pending


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{OUT}/mlflow.db")
    main(jobs(), OUT)
