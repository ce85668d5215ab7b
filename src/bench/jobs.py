"""Benchmarks over real jobs composed from conf/: probe_cache (whole runs), data (loader against
model step) and startup (CLI and time to the first step)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from src.bench.steps import StepSetup, raw_loop, row

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def compose(overrides: list[str], root: Path, run: str = "run"):
    """(config, choices) of conf/train.yaml writing into root/run."""
    from omegaconf import open_dict

    from src.config import compose as compose_job

    cfg, choices = compose_job(overrides)
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(root), str(root / run)
    return cfg, choices


def timed_train(overrides: list[str], root: Path, run: str = "run") -> float:
    from src.training import train

    cfg, choices = compose(overrides, root, run)
    start = time.perf_counter()
    train(cfg, choices)
    return time.perf_counter() - start


def ten_epochs(job_overrides: list[str]) -> list[str]:
    """The job for 10 epochs, timed as a whole run (no logger, test or bar: the same for both)."""
    return [
        *job_overrides,
        "trainer.max_epochs=10",
        "logger=none",
        "test=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.model_checkpoint.save_last=false",
    ]


def suite_prefix_cache(job_overrides: list[str], goal: float) -> list[dict]:
    """10-epoch partial (all but the last two stages frozen) and linear_probe runs, without and
    with the prefix cache (cold: the cached run computes its cache). Pixel augmentation off in
    both, since random augmentation turns the cache off."""
    common = [*ten_epochs(job_overrides), "regularisation.augmentation=none"]
    strategies = {
        "partial -2": ["strategy=partial", "strategy.freeze_stages=-2"],
        "linear_probe": ["strategy=linear_probe"],
    }
    job = " ".join(job_overrides) or "default job"
    rows = []
    for name, strategy in strategies.items():
        with tempfile.TemporaryDirectory() as tmp:
            off = timed_train([*common, *strategy, "strategy.cache_prefix=false"], Path(tmp), "off")
            on = timed_train([*common, *strategy, "strategy.cache_prefix=true"], Path(tmp), "on")
            # The next run of a study hits the cache: what is left is the part that trains, the
            # ceiling of any prefix cache for this split of the network.
            warm = timed_train(
                [*common, *strategy, "strategy.cache_prefix=true"], Path(tmp), "warm"
            )
        what = f"{name} uncached / cached (%s), 10 epochs, {job}, augmentation none"
        rows.append(row("prefix_cache", what % "cold", off, on, goal, "s"))
        rows.append(row("prefix_cache", what % "warm: the ceiling", off, warm, None, "s"))
    return rows


def suite_probe_cache(job_overrides: list[str], goal: float) -> list[dict]:
    """10-epoch linear_probe run (prefix cache off) against a feature_extract run with a cold cache
    (it pays for its one extraction) and a torch linear head for the same 10 epochs; and the
    extraction's throughput against raw batched inference of the same backbone."""
    common = ten_epochs(job_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        # One project root for all three, as in a real study (the data paths are part of the key).
        probe = timed_train(
            [*common, "strategy=linear_probe", "strategy.cache_prefix=false"], Path(tmp), "probe"
        )
        features = [
            *common,
            "strategy=feature_extract",
            "strategy.classifier=linear",
            f"strategy.cache_dir={Path(tmp) / 'cache'}",
        ]
        cold = timed_train(features, Path(tmp), "cold")
        warm = timed_train(features, Path(tmp), "warm")  # the next run of a study: cache hit
    job = " ".join(job_overrides) or "default job"
    return [
        row(
            "probe_cache",
            f"linear_probe (uncached) / feature_extract cold cache, 10 epochs, {job}",
            probe,
            cold,
            goal,
            "s",
        ),
        row(
            "probe_cache",
            f"linear_probe (uncached) / feature_extract warm cache, 10 epochs, {job}",
            probe,
            warm,
            goal,
            "s",
        ),
        extraction_row(job_overrides),
    ]


def extraction_row(job_overrides: list[str]) -> dict:
    """Images/s of a cold feature extraction (the job's data, loader and batch transform included)
    against the same backbone's raw batched inference on ready tensors, side by side."""
    from src.caching import inference_setup
    from src.config import build_data
    from src.pipelines.features import cached_features

    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = compose(job_overrides, Path(tmp))
        datamodule, _, model = build_data(cfg)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        raw = raw_inference(model, datamodule, device)
        _, stats = cached_features(model, datamodule, Path(tmp) / "cache", device, ("train",))
    extracted = len(datamodule.splits.train) / stats["feature_cache/extract_seconds"]
    batch, channels_last = inference_setup(datamodule, device)
    return row(
        "probe_cache",
        f"feature extraction / raw batched inference, {cfg.backbone.name} b{batch}"
        + " channels_last" * channels_last,
        extracted,
        raw,
        0.9,
        "img/s",
    )


def raw_inference(model, datamodule, device: torch.device, seconds: float = 10.0) -> float:
    """Images/s of pooled features from one ready batch, repeated: the backbone alone."""
    from src.caching import inference_setup
    from src.pipelines.features import pooled_features

    batch, channels_last = inference_setup(datamodule, device)
    images, _ = next(iter(datamodule.eval_batches("train", device)))
    images = images[:1].expand(batch, *images.shape[1:]).contiguous()
    model = model.eval().to(device)
    if channels_last:
        model, images = (
            model.to(memory_format=torch.channels_last),
            images.contiguous(memory_format=torch.channels_last),
        )
    with torch.inference_mode():
        pooled_features(model, images)  # warm-up
        _sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            pooled_features(model, images)
            count += batch
        _sync(device)
    return count / (time.perf_counter() - start)


def loader_throughput(datamodule, device: torch.device, epochs: int) -> float:
    """Images/s the training loader delivers to the device, model-ready (batch transforms applied)."""
    count, start = 0, None
    loader = datamodule.train_dataloader()  # once, as Lightning does: workers persist
    for epoch in range(epochs + 1):  # epoch 0 warms workers and caches
        if epoch == 1:
            _sync(device)
            start = time.perf_counter()
        loader.sampler.set_epoch(epoch)
        for step, (images, labels) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            if datamodule.batch_transforms is not None:
                images = datamodule.batch_transforms[0](images, step)
            count += len(labels) if epoch else 0
    _sync(device)
    return count / (time.perf_counter() - start)


def data_row(name: str, overrides: list[str], setup: StepSetup, epochs: int, goal: float) -> dict:
    from timm.data import resolve_model_data_config

    from src.config import build_data
    from src.strategies import Finetune

    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = compose([*overrides, "logger=none"], Path(tmp))
        datamodule, _, backbone = build_data(cfg)
        loader = loader_throughput(datamodule, setup.device, epochs)
        size = resolve_model_data_config(backbone)["input_size"][-1]
    model_setup = replace(setup, image_size=size, batch_size=cfg.dataset.batch_size)
    step = raw_loop(model_setup, Finetune(), steps=10, warmup=3)
    path = (
        "uint8 batches transformed on the device"
        if datamodule.batch_transforms is not None
        else f"per-image PIL, {cfg.dataset.num_workers} workers"
    )
    return row(
        "data",
        f"loader / model step, {name} ({path}), "
        f"{cfg.backbone.name} {size}px b{cfg.dataset.batch_size}",
        loader,
        step,
        goal,
        "img/s",
    )


def write_image_folder(source, root: Path, per_class: int) -> Path:
    """Real images as PNG files in class folders: the first per_class of 5 Fashion-MNIST classes."""
    from PIL import Image

    pool = source().pool
    for label, name in enumerate(["tshirt", "trouser", "pullover", "dress", "coat"]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate((pool.targets == label).nonzero()[0][:per_class]):
            Image.fromarray(pool.images[index]).save(folder / f"{i}.png")
    return root


def suite_data(job_overrides: list[str], setup: StepSetup, epochs: int, goal: float) -> list:
    from hydra.utils import instantiate

    rows = [data_row("default job", job_overrides, setup, epochs, goal)]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*job_overrides, "dataset=fashion_mnist"]  # its images, wherever they are
        source = instantiate(compose(overrides, Path(tmp))[0].dataset.source)
        folder = write_image_folder(source, Path(tmp) / "images", per_class=400)
        overrides = [*job_overrides, "dataset=imagefolder", f"dataset.source.root={folder}"]
        rows.append(data_row("imagefolder", overrides, setup, epochs, goal))
    return rows


def _wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def suite_startup(budget_s: float = 3.0) -> list[dict]:
    """--help against its budget, and the import of the whole stack it avoids; time to a first
    training step is reported (a 1-step job of the default config, no logger)."""
    python = sys.executable
    help_s = _wall([python, "-m", "src.train", "--help"], repeats=3)
    stack = "import torch, lightning.pytorch, timm, torchmetrics, hydra, mlflow, src.models.module"
    stack_s = _wall([python, "-c", stack], repeats=1)
    first_step_s = _wall(
        [
            python,
            "-m",
            "src.train",
            "logger=none",
            "test=false",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint.save_last=false",
            f"paths.root_dir={tempfile.mkdtemp()}",
        ],
        repeats=1,
    )
    return [
        row(
            "startup",
            f"budget {budget_s:.0f} s / `src.train --help` wall",
            budget_s,
            help_s,
            1.0,
            "s",
        ),
        row("startup", "full-stack import / --help wall", stack_s, help_s, None, "s"),
        row("startup", "1-step default job wall / --help wall", first_step_s, help_s, None, "s"),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
