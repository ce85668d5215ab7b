"""Using a trained model: evaluate on other data sets, predict on images, export. One tiny real
training run (digits, 32 px) is shared by every test of the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from src.errors import InvalidInput
from src.eval import evaluate_run
from src.export import export_run
from src.predict import predict_images
from tests.helpers.compose import compose_entry, compose_train, train
from tests.helpers.jobs import WHOLE_SPLITS, tiny

ONE_EPOCH = tiny("trainer.max_epochs=1")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """(project root, MLflow run id) of one real tiny training."""
    root = tmp_path_factory.mktemp("trained")
    train(compose_train(root, ONE_EPOCH))
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return root, client.search_runs(experiments)[0].info.run_id


@pytest.mark.slow
def test_eval_logs_clean_and_shifted_metrics_into_the_run(run):
    root, run_id = run
    clean = evaluate_run(compose_entry("eval", root, [f"run_id={run_id}", "dataset=digits"]))
    shifted = evaluate_run(
        compose_entry("eval", root, [f"run_id={run_id}", "dataset=digits_corrupted"])
    )
    logged = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id).data
    for metrics in (clean, shifted):
        for key, value in metrics.items():
            assert logged.metrics[key] == pytest.approx(value)
    assert {"eval/digits/acc", "eval/digits_corrupted/acc", "eval/digits/f1_macro"} <= set(
        logged.metrics
    )
    assert logged.tags["eval/digits_corrupted/source_run_id"] == run_id
    assert logged.tags["eval/digits/source_checkpoint"].endswith(".ckpt")
    table = MlflowClient(f"sqlite:///{root}/mlflow.db").download_artifacts(
        run_id, "eval/cross_domain.csv", str(root)
    )
    assert [line.split(",")[0] for line in Path(table).read_text().splitlines()] == [
        "dataset",
        "digits",
        "digits_corrupted",
    ]


@pytest.mark.slow
def test_eval_by_checkpoint_path_finds_its_run(run):
    root, run_id = run
    checkpoint = next((root / "run" / "checkpoints").glob("epoch*.ckpt"))
    metrics = evaluate_run(
        compose_entry("eval", root, [f"ckpt_path={checkpoint}", "dataset=digits", "split=val"])
    )
    logged = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id).data.metrics
    assert logged["eval/digits.val/acc"] == pytest.approx(metrics["eval/digits.val/acc"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["run_id=0123abc", "dataset=digits"], "no such MLflow run"),
        (["ckpt_path=/nowhere/x.ckpt", "dataset=digits"], "no such checkpoint"),
        (["dataset=textures"], "has 3 classes but the model was trained on 10"),
        # 10 classes too, but clothes, not digits: refused, not filed as a digits model's score.
        (["dataset=fashion_mnist"], r"has the classes \['T-shirt/top'.*trained on \['0', '1'"),
    ],
)
def test_eval_refuses_bad_input(run, overrides, message):
    root, run_id = run
    if not any(o.startswith(("run_id", "ckpt_path")) for o in overrides):
        overrides = [f"run_id={run_id}", *overrides]
    with pytest.raises(InvalidInput, match=message):
        evaluate_run(compose_entry("eval", root, overrides))


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Path:
    """skimage's Chelsea, a real cat photo (ImageNet class 285: Egyptian cat)."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    return path


def test_predict_imagenet_backbone_sees_a_cat(cat, tmp_path):
    csv_file = tmp_path / "top.csv"
    cfg = compose_entry("predict", tmp_path, [f"images={cat}", "top_k=3", f"csv={csv_file}"])
    (top,) = predict_images(cfg)
    assert any(label in ("Egyptian cat", "tiger cat", "tabby, tabby cat") for label, _ in top)
    assert "Egyptian cat" in csv_file.read_text()


@pytest.mark.slow
def test_predict_with_a_trained_run_names_its_classes(run, cat, tmp_path):
    root, run_id = run
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(cat.read_bytes())
    (folder / "notes.txt").write_text("skipped: not an image suffix")
    tops = predict_images(compose_entry("predict", root, [f"run_id={run_id}", f"images={folder}"]))
    assert len(tops) == 1 and len(tops[0]) == 5
    assert {label for label, _ in tops[0]} <= {str(i) for i in range(10)}
    assert sum(p for _, p in tops[0]) <= 1.0 + 1e-6


def test_predict_refuses_a_non_image(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(InvalidInput, match="is not an image file"):
        predict_images(compose_entry("predict", tmp_path, [f"images={fake}"]))


def trained_logits(root: Path, run_id: str, images):
    """The checkpoint's logits on real images, with its evaluation preprocessing."""
    import torch

    from src.data.preprocessing import eval_transform
    from src.inference.trained import data_config, load_model, locate

    model = load_model(locate(run_id, None, f"sqlite:///{root}/mlflow.db"))
    batch = torch.stack([eval_transform(data_config(model))(image) for image in images])
    with torch.no_grad():
        return batch, model(batch)


@pytest.mark.slow
def test_torchscript_export_matches_the_checkpoint(run, cat, tmp_path):
    import torch
    from PIL import Image

    root, run_id = run
    made = export_run(compose_entry("export", root, [f"run_id={run_id}", f"output_dir={tmp_path}"]))
    batch, expected = trained_logits(root, run_id, [Image.open(cat).convert("RGB")] * 3)
    with torch.no_grad():
        exported = torch.jit.load(made["torchscript"])(batch)
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=0)
    provenance = (tmp_path / "provenance.json").read_text()
    assert run_id in provenance and ".ckpt" in provenance
    tags = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id).data.tags
    assert tags["export/torchscript"] == made["torchscript"]


@pytest.mark.slow
def test_onnx_export_matches_the_checkpoint(run, cat, tmp_path):
    import numpy as np
    import onnxruntime
    from PIL import Image

    root, run_id = run
    cfg = compose_entry(
        "export", root, [f"run_id={run_id}", "formats=[onnx]", f"output_dir={tmp_path}"]
    )

    made = export_run(cfg)
    batch, expected = trained_logits(root, run_id, [Image.open(cat).convert("RGB")] * 3)
    session = onnxruntime.InferenceSession(made["onnx"], providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": batch.numpy()})[0]
    np.testing.assert_allclose(exported, expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_registered_mlflow_model_predicts_like_src_predict(run, cat, tmp_path):
    import mlflow
    from PIL import Image

    root, run_id = run
    overrides = [f"run_id={run_id}", "formats=[]", "mlflow_model=true", "registered_name=tiny"]
    export_run(compose_entry("export", root, [*overrides, f"output_dir={tmp_path}"]))
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    pyfunc = mlflow.pyfunc.load_model("models:/tiny/1")
    batch, _ = trained_logits(root, run_id, [Image.open(cat).convert("RGB")])
    pyfunc_class = str(pyfunc.predict(batch.numpy()).argmax(axis=1)[0])
    (top,) = predict_images(compose_entry("predict", root, [f"run_id={run_id}", f"images={cat}"]))
    assert pyfunc_class == top[0][0]  # digits' class names are "0".."9"


@pytest.mark.slow
def test_eval_and_posthoc_rebuild_the_splits_of_a_run_whose_dataset_seed_is_its_own(tmp_path):
    """A run whose dataset.seed differs from its seed (an advisor trial: seed 42 on the user's
    fixed split): src.eval scores its very validation images (the test images are fixed for
    every seed anyway), and src.posthoc's source data (calibration, WiSE-FT's α, soups: all
    chosen on validation) holds the run's train/val split, not one that mixes them."""
    import numpy as np

    from src.config import instantiate_node
    from src.inference.trained import load_model, locate
    from src.posthoc.sources import Source, source_data
    from src.tracking.runs import best_metric

    job = tiny("trainer.max_epochs=1", "seed=7", "dataset.seed=3", without=WHOLE_SPLITS)
    cfg = compose_train(tmp_path, job)
    train(cfg)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    scored = evaluate_run(
        compose_entry("eval", tmp_path, [f"run_id={run.info.run_id}", "split=val"])
    )
    assert scored["eval/digits.val/acc"] == pytest.approx(best_metric(client, run.info.run_id))
    trained = locate(run.info.run_id, None, uri)
    assert trained.split_seed == 3 and trained.config["seed"] == 7
    rebuilt = source_data(Source(trained, load_model(trained))).splits
    trained_on = instantiate_node(cfg.dataset).splits
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(rebuilt, split), getattr(trained_on, split))
