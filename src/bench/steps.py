"""Training-step throughput of hand-written loops, measured side by side: partial against full
fine-tuning (freeze). Synthetic batches already on the device, so the figures are about the step
and not the data. (overhead, the job against such a loop, is in src/bench/overhead.py.)"""

from __future__ import annotations

import functools
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StepSetup:
    """One model/batch/precision configuration, shared by every loop being compared."""

    backbone: str
    image_size: int
    batch_size: int
    device: torch.device
    precision: str  # Lightning's names: 32-true | bf16-mixed | 16-mixed
    channels_last: bool
    compile: bool
    pretrained_weights: str | None  # "package" for the offline backbones, None = random init

    def model(self) -> nn.Module:
        from src.backbones import create_backbone

        torch.manual_seed(0)
        model = create_backbone(
            self.backbone,
            num_classes=10,
            pretrained=self.pretrained_weights is not None,
            weights=self.pretrained_weights,
            input_size=[3, self.image_size, self.image_size],
        )
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batches(self, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)
        shape = (self.batch_size, 3, self.image_size, self.image_size)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return [
            (
                torch.randn(shape, generator=generator)
                .to(self.device)
                .contiguous(memory_format=memory_format),
                torch.randint(0, 10, (self.batch_size,), generator=generator).to(self.device),
            )
            for _ in range(count)
        ]

    def autocast(self):
        if self.precision == "32-true":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision.startswith("bf16") else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def raw_loop(setup: StepSetup, strategy, steps: int, warmup: int) -> float:
    """Images/s of the loop a researcher writes by hand: forward, loss, backward, AdamW step."""
    from src.models.module import build_optimizer

    model = setup.model().train()
    optimizer = build_optimizer(functools.partial(torch.optim.AdamW, lr=1e-3), strategy, model)
    strategy.apply(model, optimizer.param_groups, epoch=0)
    if setup.compile:
        model.compile()
    criterion, batches = nn.CrossEntropyLoss(), setup.batches()
    start, profiler = 0.0, Profile("raw loop")
    for step in range(warmup + steps):
        if step == warmup:
            setup.sync()
            profiler.start()
            start = time.perf_counter()
        images, labels = batches[step % len(batches)]
        with setup.autocast():
            loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    setup.sync()
    seconds = time.perf_counter() - start
    profiler.stop()
    return setup.batch_size * steps / seconds


class Profile:
    """With BENCH_PROFILE=1, torch.profiler over the timed steps (timings then include its cost):
    the busiest ops and the host-device syncs, which stall the GPU's queue."""

    def __init__(self, name: str):
        self.name, self.profile = name, None

    def start(self) -> None:
        if os.environ.get("BENCH_PROFILE"):
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self.profile = profile(activities=activities)
            self.profile.__enter__()

    def stop(self) -> None:
        if self.profile is None:
            return
        self.profile.__exit__(None, None, None)
        events = self.profile.key_averages()
        syncs = {
            e.key: e.count
            for e in events
            if any(s in e.key for s in ("Synchronize", "_local_scalar_dense", "aten::item"))
        }
        print(f"\n== profile: {self.name} == host-device syncs: {syncs}")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def interleaved(measures: dict, rounds: int) -> dict[str, float]:
    """Median of each measure over rounds run alternately, so drift hits every measure alike."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return {name: statistics.median(values) for name, values in results.items()}


def suite_freeze(setup: StepSetup, steps: int, warmup: int, rounds: int, goal: float) -> list:
    from src.strategies import Finetune, LinearProbe, Partial

    measures = {
        "finetune": lambda: raw_loop(setup, Finetune(), steps, warmup),
        "partial": lambda: raw_loop(setup, Partial(freeze_stages=-1), steps, warmup),
        "head": lambda: raw_loop(setup, LinearProbe(), steps, warmup),
    }
    speeds = interleaved(measures, rounds)
    return [
        row(
            "freeze",
            f"partial (all but last stage frozen) / finetune, {describe(setup)}",
            speeds["partial"],
            speeds["finetune"],
            goal,
            "img/s",
        ),
        row(
            "freeze",
            f"head only (linear_probe) / finetune, {describe(setup)}",
            speeds["head"],
            speeds["finetune"],
            None,
            "img/s",
        ),
    ]


def describe(setup: StepSetup) -> str:
    extras = (
        [setup.precision] + ["channels_last"] * setup.channels_last + ["compile"] * setup.compile
    )
    return (
        f"{setup.backbone} {setup.image_size}px b{setup.batch_size} {setup.device.type} "
        + " ".join(extras)
    )


def row(suite: str, measure: str, a: float, b: float, goal: float | None, unit: str) -> dict:
    """a / b against goal (None: reported, no goal)."""
    ratio = a / b
    return {
        "suite": suite,
        "measure": measure,
        "a": a,
        "b": b,
        "ratio": ratio,
        "goal": goal,
        "ok": None if goal is None else ratio >= goal,
        "unit": unit,
    }
