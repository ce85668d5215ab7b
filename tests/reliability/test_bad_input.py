"""Bad input is refused before any work, with a message that names the key and what is valid:
no MLflow run is created, nothing is written. On the command line: exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from hydra.errors import ConfigCompositionException

from src.errors import InvalidInput
from tests.helpers.compose import compose_train, train
from tests.helpers.jobs import ROOT, child_env

# (overrides, a fragment the message must contain)
REFUSED_BY_TRAIN = [
    (["backbone=resnet18", "backbone.name=resnet_5O"], "resnet50"),  # closest timm names
    (["dataset.fraction=0"], "dataset.fraction=0"),
    (["dataset.fraction=1.5"], "valid range (0.0, 1.0]"),
    (["dataset.samples_per_class=100000"], "valid range [2,"),
    (["dataset.samples_per_class=1"], "must be >= 2"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction"),
    (["dataset.batch_size=0"], "dataset.batch_size"),
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["strategy=gradual_unfreeze", "strategy.milestones=[1,2,9]"], "max_epochs"),
    (["regularisation.augmentation=sharpen"], "regularisation.augmentation"),
    (["regularisation.label_smoothing=1.5"], "regularisation.label_smoothing"),
    (["regularisation.mixup_alpha=-1"], "regularisation.mixup_alpha"),
    (["dataset=imagefolder", "dataset.source.root=/no/such/folder"], "/no/such/folder"),
    (["dataset=imagefolder"], "dataset.source.root is required"),  # a ??? a partial would drop
    (["backbone.weights=/no/such/weights.pth"], "/no/such/weights.pth"),
    (["dataset.transforms_on_device=maybe"], "transforms_on_device"),
]


@pytest.mark.parametrize("overrides,fragment", REFUSED_BY_TRAIN, ids=lambda v: str(v)[:40])
def test_bad_value_is_refused_before_any_run(tmp_path, tiny_overrides, overrides, fragment):
    cfg = compose_train(tmp_path, [*tiny_overrides, *overrides])
    with pytest.raises(InvalidInput) as refused:
        train(cfg)
    assert fragment in str(refused.value)
    store = mlflow.MlflowClient(cfg.paths.tracking_uri)
    assert store.search_experiments() == [] or not store.search_runs(
        [e.experiment_id for e in store.search_experiments()]
    )
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["strategy=fine_tune"], "Available options in 'strategy'"),
        (["dataset=fashionmnist"], "Available options in 'dataset'"),
        (["regularisation=heavy"], "Available options in 'regularisation'"),
        (["trainer.max_epoch=3"], "max_epoch"),
    ],
)
def test_unknown_option_lists_the_valid_ones(tmp_path, overrides, fragment):
    with pytest.raises(ConfigCompositionException) as refused:
        compose_train(tmp_path, overrides)
    message = str(refused.value) + str(refused.value.__cause__)
    assert fragment in message


@pytest.mark.parametrize(
    "entry, overrides, key",
    [
        ("predict", [], "images"),
        ("explain", [], "run_id"),
        ("train", ["backbone=timm"], "backbone.name"),  # interpolated by other keys too
        ("train", ["dataset=imagefolder"], "dataset.source.root"),
        ("similarity", ["dataset=imagefolder"], "dataset.source.root"),
    ],
)
def test_a_mandatory_key_left_out_is_named_before_the_task_starts(tmp_path, entry, overrides, key):
    from src.cli import check_required
    from tests.helpers.compose import compose_entry

    with pytest.raises(InvalidInput, match=f"^{key} is required: add {key}=<value>"):
        check_required(compose_entry(entry, tmp_path, overrides))
    check_required(compose_entry(entry, tmp_path, [*overrides, f"{key}=given"]))


@pytest.mark.slow
def test_command_line_exits_2_without_a_traceback(tmp_path):
    env = child_env()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "dataset=digits",
            "dataset.fraction=2",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "dataset.fraction=2 is outside the valid range (0.0, 1.0]" in output
    assert "Traceback" not in output
    assert not (tmp_path / "mlflow.db").exists() or not mlflow.MlflowClient(
        f"sqlite:///{tmp_path}/mlflow.db"
    ).search_runs(["0"])


@pytest.mark.parametrize(
    "entry, overrides, fragment",
    [
        ("eval", ["run_id=abc", "split=tset"], "split=tset: must be train, val or test"),
        ("predict", ["images=IMAGE", "batch_size=0"], "batch_size=0: an integer >= 1"),
        ("export", ["run_id=abc", "formats=[]"], "Nothing to export"),
        ("export", ["run_id=abc", "formats=docx"], "formats: unknown ['docx']"),
        ("export", ["run_id=abc", "registered_name=m"], "add mlflow_model=true"),
        ("export", ["run_id=abc", "atol=0"], "atol=0"),
        ("export", ["run_id=abc"], "no MLflow store at"),  # and none is created
    ],
)
def test_entry_points_refuse_bad_values_before_any_model_or_store(
    tmp_path, entry, overrides, fragment
):
    from PIL import Image

    from src.eval import evaluate_run
    from src.export import export_run
    from src.predict import predict_images
    from tests.helpers.compose import compose_entry

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    overrides = [o.replace("IMAGE", str(image)) for o in overrides]
    run = {"eval": evaluate_run, "predict": predict_images, "export": export_run}[entry]
    with pytest.raises(InvalidInput) as refused:
        run(compose_entry(entry, tmp_path, overrides))
    assert fragment in str(refused.value)
    assert not list(tmp_path.glob("*.db"))  # no MLflow store opened, hence none created
