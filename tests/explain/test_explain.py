"""src.explain and predict explain=: the CAM methods are pytorch-grad-cam's, the target layer comes
from timm's feature_info, the maps are the input's H x W in [0, 1]; the analysis numbers are right;
bad input is refused before work; every strategy's run, a multi-label run and a ViT are explained
into a child run (kind=explain) whose gallery holds the k highest-loss test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient

from src.errors import InvalidInput
from src.explain import analysis as A
from src.explain.cams import (
    DEFAULT_METHOD,
    DEFAULT_STAGE,
    Explainer,
    check_method,
    methods,
    target_layer,
)
from tests.helpers.compose import CONF_DIR, compose_config, compose_entry, compose_train, train
from tests.helpers.jobs import tiny


def explain_cfg(root: Path, overrides):
    """conf/explain.yaml writing into root (its figures into root/explained)."""
    return compose_config("explain", root, overrides, output_dir=root / "explained")


# --- methods, layers, maps ------------------------------------------------------------------
def test_methods_are_the_packages_own_and_unknown_ones_are_listed():
    import pytorch_grad_cam

    assert methods()["scorecam"] is pytorch_grad_cam.ScoreCAM
    assert {"gradcam", "gradcamplusplus", "eigencam", "layercam", "hirescam"} <= set(methods())
    assert check_method("GradCAM++") == "gradcamplusplus" and check_method(None) == DEFAULT_METHOD
    with pytest.raises(InvalidInput, match=r"method=nosuch: .*'eigencam'.*'gradcam\+\+'"):
        check_method("nosuch")


def test_target_layer_is_a_feature_info_stage_or_a_module_name():
    model = timm.create_model("test_resnet", num_classes=3)
    stages = [info["module"] for info in model.feature_info]
    assert target_layer(model)[0] == stages[DEFAULT_STAGE]
    assert target_layer(model, -2)[0] == stages[-2]
    assert target_layer(model, "layer2.0.conv1")[1] is model.layer2[0].conv1
    with pytest.raises(InvalidInput, match=r"layer=nope: no such module\. Its stages .*layer4"):
        target_layer(model, "nope")


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_maps_are_the_inputs_size_in_the_unit_interval(name):
    torch.manual_seed(0)
    size = {"img_size": 64} if "vit" in name else {}
    model = timm.create_model(name, num_classes=3, **size).eval()
    explainer = Explainer(model, "gradcam")
    maps = explainer(torch.randn(2, 3, 64, 64), [0, 2])
    explainer.close()
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() == 0 and maps.max() == pytest.approx(1)


# --- the analysis numbers -------------------------------------------------------------------
def outputs(scores, labels, probabilistic=True) -> A.Outputs:
    scores, labels = torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)
    losses = A.image_losses(scores, labels, probabilistic)
    return A.Outputs(scores.numpy(), labels.numpy(), scores.numpy(), losses.numpy())


def test_confused_pairs_per_class_accuracy_and_top_losses():
    # true 0,0,0,1,1,2; predicted 0,1,1,1,0,2
    eye = np.eye(3) * 4
    result = outputs([eye[0], eye[1], eye[1] * 0.5, eye[1], eye[0], eye[2]], [0, 0, 0, 1, 1, 2])
    pairs = A.confused_pairs(result, ["a", "b", "c"])
    assert pairs == [
        {"true": "a", "predicted": "b", "count": 2, "share": 2 / 3},
        {"true": "b", "predicted": "a", "count": 1, "share": 0.5},
    ]
    rows = A.per_class_accuracy(result, ["a", "b", "c"])
    assert [r["accuracy"] for r in rows] == pytest.approx([1 / 3, 0.5, 1.0])
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    assert A.top_losses(result, 3).tolist() == [1, 4, 2]  # ties: the earlier image first


def test_an_svm_heads_loss_is_the_margin_it_lost_by():
    result = outputs([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], [1, 1], probabilistic=False)
    assert result.losses.tolist() == pytest.approx([1.5, -2.0])


def test_k_must_be_a_positive_integer():
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidInput, match="k="):
            A.check_k(k)


# --- refusals before any work ---------------------------------------------------------------
def test_malformed_unknown_and_model_less_run_ids_are_refused(tmp_path):
    from src.explain.run import explain_run

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("x")
    similarity = client.create_run(experiment, tags={"kind": "similarity"}).info.run_id
    cases = {
        "run_id=abc": "not an MLflow run id",
        f"run_id={'0' * 32}": "no such MLflow run",
        f"run_id={similarity}": "is a similarity run: it holds no trained model",
    }
    for override, message in cases.items():
        with pytest.raises(InvalidInput, match=message):
            explain_run(explain_cfg(tmp_path, [override]))
    with pytest.raises(InvalidInput, match="k=0"):
        explain_run(explain_cfg(tmp_path, [f"run_id={similarity}", "k=0"]))


# --- every strategy, a multi-label run, a ViT -------------------------------------------------
STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml"))
SMALL = [
    "backbone=timm",
    "backbone.name=test_resnet",
    "backbone.pretrained=false",
    "dataset.test_samples_per_class=3",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "logger.mlflow.log_model=false",
    "dataset.num_workers=0",
]
EXTRA = {
    "feature_extract": ["strategy.classifier=svm"],
    "lp_ft": ["strategy.probe_epochs=1"],
    "gradual_unfreeze": ["strategy.milestones=[1]"],
    "vit": ["backbone.name=test_vit", "+backbone.model_kwargs.img_size=32"],
}


def tiny_run(root: Path, case: str) -> str:
    """A seconds-long digits run of the case (a strategy, vit or multilabel); its run id."""
    overrides = tiny(*SMALL, *EXTRA.get(case, []))
    if case in STRATEGIES:
        overrides.append(f"strategy={case}")
    if case == "feature_extract":
        overrides.append(f"strategy.cache_dir={root / 'cache'}")
    if case == "multilabel":
        from tests.helpers.medmnist_files import write_medmnist_npz

        write_medmnist_npz(root / "medmnist", "chestmnist")
        overrides = [o for o in overrides if not o.startswith(("dataset=", "dataset.test_samples"))]
        overrides += [
            "dataset=chestmnist",
            f"dataset.source.root={root / 'medmnist'}",
            "monitor.metric=val/auroc",
        ]
    train(compose_train(root, overrides))
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.info.run_id


def check_maps(folder: Path, size: int) -> list[Path]:
    files = sorted(folder.rglob("*.npy"))
    assert files, f"no heatmaps in {folder}"
    for file in files:
        heatmap = np.load(file)
        assert heatmap.shape == (size, size) and heatmap.min() >= 0 and heatmap.max() <= 1
        assert file.with_suffix(".png").is_file()
    return files


@pytest.mark.slow
@pytest.mark.parametrize("case", [*STRATEGIES, "multilabel", "vit"])
def test_explain_and_predict_explain_work_on_every_kind_of_run(case, tmp_path, one_thread):
    from src.explain.run import explain_run
    from src.predict import predict_images

    run_id = tiny_run(tmp_path, case)
    result = explain_run(explain_cfg(tmp_path, [f"run_id={run_id}", "k=2"]))
    child = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.data.tags["kind"] == "explain"
    assert child.info.status == "FINISHED"
    out = result["output"]
    for name in ("gallery.png", "feature_map.png", "tables/per_class_accuracy.csv"):
        assert (out / name).is_file(), name
    check_maps(out / "cam" / "top_losses", 32)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        image = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(image).save(images / f"im{i}.png")
    csv = tmp_path / "predicted" / "top.csv"
    overrides = [f"run_id={run_id}", f"images={images}", "explain=true", f"csv={csv}"]
    predict_images(compose_entry("predict", tmp_path, overrides))
    maps = check_maps(csv.parent / "explain", 32)
    assert {m.name.split("_")[0] for m in maps} == {"im0", "im1"}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("finetuned")
    return root, tiny_run(root, "finetune")


@pytest.mark.slow
def test_the_gallery_holds_the_k_highest_loss_test_images(finetuned, one_thread):
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from src.config import instantiate_node
    from src.data.preprocessing import eval_transform
    from src.explain.run import explain_run
    from src.inference.trained import data_config, load_model, locate

    root, run_id = finetuned
    result = explain_run(explain_cfg(root, [f"run_id={run_id}", "k=4"]))
    # Independently: the run's model and test split, cross-entropy per image.
    trained = locate(run_id, None, f"sqlite:///{root}/mlflow.db")
    model = load_model(trained)
    node = OmegaConf.create(trained.config["dataset"])
    node.num_workers = 0
    datamodule = instantiate_node(node)
    datamodule.setup()
    transform = eval_transform(data_config(model))
    datamodule.set_transforms(transform, transform)
    with torch.no_grad():
        losses = torch.cat(
            [
                F.cross_entropy(model(x), y, reduction="none")
                for x, y in datamodule.eval_loader("test")
            ]
        )
    # The chosen images' losses are the 4 highest (to float noise between batchings: a barely
    # trained model's losses nearly tie).
    chosen = result["top_losses"]
    highest = losses.topk(4).values.tolist()
    assert sorted(losses[chosen].tolist(), reverse=True) == pytest.approx(highest, abs=1e-3)
    assert len(set(chosen)) == 4
    test_indices = datamodule.splits.test
    named = {int(p.name[4:9]) for p in (result["output"] / "cam" / "top_losses").glob("*.npy")}
    assert named == {int(test_indices[i]) for i in chosen}
    # src.report selects the child by kind=explain and leaves it out of the training tables.
    from src.report.query import Query, search

    uri = f"sqlite:///{root}/mlflow.db"
    assert search(Query(uri, kind="explain"))["run_id"].tolist() == [result["run_id"]]
    assert search(Query(uri))["run_id"].tolist() == [run_id]


@pytest.mark.slow
def test_a_layer_or_class_the_model_lacks_is_refused(finetuned):
    from src.explain.run import explain_run

    root, run_id = finetuned
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    before = len(client.search_runs(["0", "1"]))
    for override, message in {
        "layer=head.nope": r"layer=head.nope: no such module\. Its stages",
        "classes=[3,eleven]": r"classes=\['eleven'\]: the model has no such class",
    }.items():
        with pytest.raises(InvalidInput, match=message):
            explain_run(explain_cfg(root, [f"run_id={run_id}", override]))
    assert len(client.search_runs(["0", "1"])) == before  # refused before any child run


# --- the default method and layer point at the evidence (experiments/explain_pointing) ---------
def quadrant_images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pointing game's images (experiments/explain_pointing/make_data.py), 96 px, normalised
    with Lite0's mean and std (0.5)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "experiments/explain_pointing/make_data.py"
    spec = importlib.util.spec_from_file_location("make_data", path)
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    rng = np.random.default_rng(seed)
    labels = np.arange(4 * per_class) % 4
    images = np.stack([make_data.quadrant_image(rng, int(q), 96) for q in labels])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (tensor - 0.5) / 0.5, torch.from_numpy(labels)


@pytest.mark.slow
def test_the_default_method_and_layer_point_at_the_evidence(one_thread):
    """Lite0 (offline ImageNet weights) fine-tuned on quadrant images in a few steps; the default
    maps of the test images must peak in the square's quadrant at least 80 % of the time."""
    from src.backbones import create_backbone
    from src.explain.cams import peak

    torch.manual_seed(0)
    model = create_backbone("tf_efficientnet_lite0", 4, weights="package", input_size=[3, 96, 96])
    model.eval()  # BatchNorm statistics stay the pretrained ones (finetune's freeze_stats)
    images, labels = quadrant_images(40, seed=0)
    head = list(model.get_classifier().parameters())
    trunk = [p for p in model.parameters() if all(p is not h for h in head)]
    # finetune's learning rates: 1e-3 for the new head, a tenth of it for the backbone.
    optimizer = torch.optim.AdamW([{"params": head, "lr": 1e-3}, {"params": trunk, "lr": 1e-4}])
    for _ in range(5):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 32):
            batch = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test, truth = quadrant_images(10, seed=1)
    with torch.no_grad():
        assert (model(test).argmax(1) == truth).float().mean() >= 0.9  # it learned the task
    explainer = Explainer(model)
    maps = explainer(test, truth.tolist())
    explainer.close()
    hits = [
        2 * (peak(m)[0] >= 48) + (peak(m)[1] >= 48) == t
        for m, t in zip(maps, truth.tolist(), strict=True)
    ]
    assert np.mean(hits) >= 0.8, f"{explainer.method} at {explainer.layer}: {np.mean(hits):.2f}"


# --- predict explain= without a run: the ImageNet backbone --------------------------------------
def test_predict_explains_a_photo_and_refuses_bad_methods_and_classes(tmp_path, one_thread):
    from PIL import Image
    from skimage import data

    from src.predict import predict_images

    cat = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(cat)
    csv = tmp_path / "out" / "top.csv"
    base = [f"images={cat}", "top_k=1", f"csv={csv}", "backbone.input_size=[3,96,96]"]
    predict_images(compose_entry("predict", tmp_path, [*base, "explain=gradcam++"]))
    heatmap = np.load(tmp_path / "out" / "explain" / "chelsea_Egyptian_cat.npy")
    assert heatmap.shape == (96, 96) and heatmap.min() == 0 and heatmap.max() == pytest.approx(1)
    for override, message in {
        "explain=nosuch": r"method=nosuch: not a pytorch-grad-cam method",
        "explain_class=unicorn": r"explain_class= needs explain=true",
    }.items():
        with pytest.raises(InvalidInput, match=message):
            predict_images(compose_entry("predict", tmp_path, [*base, override]))
    with pytest.raises(InvalidInput, match=r"explain_class=\['unicorn'\]: the model has no"):
        overrides = [*base, "explain=true", "explain_class=unicorn"]
        predict_images(compose_entry("predict", tmp_path, overrides))


@pytest.mark.slow  # a subprocess: 7-12 s on the shared machine
def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from tests.helpers.jobs import ROOT, child_env

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.explain",
            "run_id=not-a-run",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "run_id=not-a-run: not an MLflow run id" in output and "Traceback" not in output
