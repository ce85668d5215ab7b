"""One validation pass before anything is created (issue 20): every bad value below is refused
with one line that names the key, and no MLflow store, run or output folder exists afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from src.errors import InvalidInput
from tests.helpers.compose import compose_train, train
from tests.helpers.faults import HOLD_LOCK
from tests.helpers.jobs import ROOT, child_env, default_signals

# Refused by the config alone: no data or model is built (fast).
BY_CONFIG = [
    (["seed=-1"], "seed=-1: an integer in [0, 4294967295]"),
    (["seed=abc"], "seed=abc"),
    (["seed=1.5"], "seed=1.5"),
    (["seed=null"], "seed=None"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: an integer >= 1"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0"),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches=-1"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5"),
    (["monitor.mode=maximum"], "monitor.mode=maximum: choose min or max"),
    (["monitor.metric=val/loss"], "monitor.mode=max for monitor.metric=val/loss would select"),
    (["monitor.metric=val/acc", "monitor.mode=min"], "use monitor.mode=max"),
    (["monitor.metric=acc"], "monitor.metric=acc"),
    (["resume=last"], "resume=last: choose null, auto or an MLflow run id"),
    (["backbone.input_size=[1,64,64]"], "first entry must be 3"),
    (["backbone.input_size=[3,64]"], "[3, height, width]"),
    (["backbone.std=[0,0,0]"], "three numbers > 0"),  # divides by zero
    (["backbone.mean=[0.5,0.5]"], "one per RGB channel"),
    (["backbone.crop_pct=0"], "backbone.crop_pct=0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),  # flips gradients
    (["experiment_name=''"], "experiment_name=''"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
]

# Refused once the data and the model are built (each builds the small default backbone).
BY_MODEL = [
    (["backbone.input_size=[3,0,0]"], "backbone.input_size=[3, 0, 0]"),
    (["strategy=partial", "strategy.freeze_stages=99"], "strategy.freeze_stages=99"),
    (["strategy=partial", "strategy.freeze_stages=-99"], "valid range [-"),
    (["strategy=surgical", "strategy.block=999"], "strategy.block=999"),
    (["strategy=gradual_unfreeze", "strategy.milestones=[]"], "never unfreeze"),
    (
        [
            "strategy=gradual_unfreeze",
            "trainer.max_epochs=30",
            "strategy.milestones=[1,2,3,4,5,6,7,8,9,10,11,12]",
        ],
        "at most",
    ),
    (["monitor.metric=val/bogus"], "monitor.metric=val/bogus is not logged"),
    (["trainer.precision=bogus"], "trainer: "),
    (["trainer.accelerator=tpu"], "trainer: "),
    (["dataset.samples_per_class=2", "dataset.val_fraction=0.8"], "no training image"),
    (["resume=0123456789abcdef0123456789abcdef"], "no such MLflow run"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: must be a finite number"),
    (["strategy.backbone_lr_mult=inf"], "strategy.backbone_lr_mult=inf"),
]


def assert_nothing_created(tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists(), "an MLflow store was created"
    assert not (tmp_path / "run").exists(), "an output folder was created"
    assert not (tmp_path / "mlartifacts").exists()


def refused(tmp_path: Path, overrides: list[str]) -> str:
    cfg = compose_train(tmp_path, overrides)
    with pytest.raises(InvalidInput) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("overrides,fragment", BY_CONFIG, ids=lambda v: str(v)[:48])
def test_bad_config_is_refused_before_anything(tmp_path, tiny_overrides, overrides, fragment):
    assert fragment in refused(tmp_path, [*tiny_overrides, *overrides])
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("overrides,fragment", BY_MODEL, ids=lambda v: str(v)[:48])
def test_bad_value_for_this_model_is_refused_before_anything(
    tmp_path, tiny_overrides, overrides, fragment
):
    assert fragment in refused(tmp_path, [*tiny_overrides, *overrides])
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize(
    "uri,fragment",
    [
        ("sqlit:///{tmp}/x.db", "unknown scheme 'sqlit'"),
        ("file://{tmp}/mlruns", "refuses the file store"),
        ("{tmp}/mlruns", "refuses the file store"),
        ("sqlite:///{tmp}/a_file/x.db", "is not writable"),
        ("sqlite:///{tmp}", "is a folder"),
        ("sqlite://x.db", "sqlite:///relative.db"),
    ],
)
def test_bad_tracking_uri_is_refused_before_anything(tmp_path, tiny_overrides, uri, fragment):
    (tmp_path / "a_file").write_text("not a folder")
    cfg = compose_train(tmp_path, tiny_overrides)
    cfg.paths.tracking_uri = uri.format(tmp=tmp_path)
    with pytest.raises(InvalidInput, match="tracking_uri") as error:
        train(cfg)
    assert fragment in str(error.value)
    assert_nothing_created(tmp_path)
    assert not (tmp_path / "mlruns").exists()


def _store_with_run(tmp_path: Path, status: str, tags: dict, params: dict) -> str:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("transferlab"), tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _runs(tmp_path: Path) -> int:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def test_resume_of_a_finished_run_is_refused(tmp_path, tiny_overrides):
    run_id = _store_with_run(tmp_path, "FINISHED", {}, {})
    assert "already FINISHED" in refused(tmp_path, [*tiny_overrides, f"resume={run_id}"])
    assert _runs(tmp_path) == 1 and not (tmp_path / "run").exists()


def test_resume_with_another_config_names_the_keys_that_differ(tmp_path, tiny_overrides):
    from src.training import flat_params

    output = tmp_path / "old"
    (output / "checkpoints").mkdir(parents=True)
    tags = {"config_fingerprint": "0" * 16, "output_dir": str(output)}
    params = {**flat_params(compose_train(tmp_path, tiny_overrides)), "optimizer/lr": "0.05"}
    run_id = _store_with_run(tmp_path, "FAILED", tags, params)
    message = refused(tmp_path, [*tiny_overrides, f"resume={run_id}"])
    assert "optimizer/lr: 0.05 -> 0.001" in message and "seed:" not in message
    assert _runs(tmp_path) == 1 and not (tmp_path / "run").exists()


def test_resume_of_a_run_in_use_is_refused(tmp_path, tiny_overrides):
    """The run's lock is held (as by the process still training it): nobody else continues it."""
    from omegaconf import OmegaConf

    from src.tracking.resume import config_fingerprint

    cfg = compose_train(tmp_path, tiny_overrides)
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=False))
    output = tmp_path / "old"
    output.mkdir()
    tags = {"config_fingerprint": fingerprint, "output_dir": str(output), "pid": "1"}
    run_id = _store_with_run(tmp_path, "RUNNING", tags, {})
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(output)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert "in use by a live process" in refused(
            tmp_path, [*tiny_overrides, f"resume={run_id}"]
        )
    finally:
        holder.kill()
        holder.wait()
    assert _runs(tmp_path) == 1


def _folder(root: Path, sizes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "sizes,extra,fragment",
    [
        ({"cat": 30, "dog": 30, "eel": 1}, [], "'eel' (0)"),
        ({"cat": 30, "dog": 30, "eel": 2}, [], "'eel' (1)"),
        ({"cat": 30, "dog": 30, "eel": 5}, ["dataset.samples_per_class=10"], "['eel']"),
        ({"cat": 30}, [], "at least 2"),
        ({}, [], "dataset.source.root="),
    ],
    ids=["one-image-class", "two-image-class", "samples_per_class", "one-class", "empty"],
)
def test_image_folder_too_small_for_its_splits_is_refused(
    tmp_path, tiny_overrides, sizes, extra, fragment
):
    root = _folder(tmp_path / "images", sizes)
    root.mkdir(exist_ok=True)
    overrides = [*tiny_overrides, "dataset=imagefolder", f"dataset.source.root={root}", *extra]
    assert fragment in refused(tmp_path, overrides)
    assert_nothing_created(tmp_path)


CLI_CASES = {
    "tracking-uri": (["src.train", "dataset=digits"], "unknown scheme 'sqlit'"),
    "n_trials": (
        ["src.train", "-m", "hparams_search=lr_wd", "hydra.sweeper.n_trials=0"],
        "hydra.sweeper.n_trials=0",
    ),
    "top_k": (["src.predict", "images=.", "top_k=-1"], "top_k=-1"),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[] if c == "tracking-uri" else [pytest.mark.slow]) for c in CLI_CASES],
)
def test_command_line_refusals_exit_2_with_one_line(tmp_path, case):
    """On the command line: exit code 2, one error line, no traceback, nothing created."""
    arguments, fragment = CLI_CASES[case]
    bad_uri = case == "tracking-uri"
    env = child_env(
        MLFLOW_TRACKING_URI=f"sqlit:///{tmp_path}/x.db" if bad_uri else f"sqlite:///{tmp_path}/m.db"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            *arguments,
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=default_signals,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    errors = [line for line in output.splitlines() if "Invalid input" in line]
    assert len(errors) == 1 and fragment in errors[0], output[-2000:]
    assert "Traceback" not in output
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlartifacts").exists()


def test_class_names_beyond_ascii_get_distinct_metric_keys():
    from src.models.metrics import metric_key

    keys = [metric_key(n) for n in ("猫", "犬", "café", "a b")]
    assert keys == ["u732b", "u72ac", "cafu00e9", "a_b"] and all(k.isascii() for k in keys)
