"""The researcher's whole journey on a new image folder, each step a real command, one fresh MLflow
store: similarity ranks the offline backbones -> the advisor (small budget) recommends a run ->
eval, predict (with heatmaps), explain and export (TorchScript, ONNX) use that run -> a report
table over the runs -> `mlflow server` on loopback finds every run. The folder is built from
scikit-image's sample photos: 6 classes, JPEG and PNG files, mixed sizes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.jobs import ROOT, child_env

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
PER_CLASS = 12


def photo_folder(root: Path) -> Path:
    """root/<photo>/<k>.{jpg,png}: random crops of each photo, resized to 40..120 px squares or
    rectangles, alternately JPEG and PNG."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        (root / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            w, h = photo.size
            side = int(min(w, h) * rng.uniform(0.5, 0.9))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            size = tuple(int(s) for s in rng.integers(40, 121, size=2))
            crop = photo.crop((x, y, x + side, y + side)).resize(size)
            crop.save(root / name / f"{k}.{'jpg' if k % 2 else 'png'}")
    return root


def run(module: str, *overrides: str, timeout: int = 900) -> tuple[str, float]:
    """`python -m <module> <overrides>` from the project root; (output, seconds); fails loudly."""
    env = child_env(OMP_NUM_THREADS="1")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{module} {overrides}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return output, time.perf_counter() - start


TRAIN = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "dataset.num_workers=0",
    "dataset.batch_size=16",
    "backbone.input_size=[3,48,48]",
]


@pytest.mark.slow
def test_from_a_photo_folder_to_a_shipped_model(tmp_path):
    steps: dict[str, str] = {}
    started = time.perf_counter()
    folder = photo_folder(tmp_path / "photos")
    files = sorted(folder.rglob("*.*"))
    assert {p.suffix for p in files} == {".jpg", ".png"} and len(files) == 6 * PER_CLASS
    where = [f"paths.root_dir={tmp_path}"]
    data = ["dataset=imagefolder", f"dataset.source.root={folder}"]
    store = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(store)

    # 1. Which pretrained model? src.similarity ranks the offline backbones on the folder.
    out, seconds = run(
        "src.similarity",
        "-m",
        "backbone=efficientnet_lite0,mobilenetv2",
        *data,
        *where,
        "max_per_class=8",
        "backbone.input_size=[3,48,48]",
        f"hydra.sweep.dir={tmp_path}/similarity",
    )
    ranking = (tmp_path / "similarity" / "ranking.md").read_text()
    assert "efficientnet_lite0" in ranking and "mobilenetv2" in ranking
    steps["similarity"] = f"ranked 2 backbones in {seconds:.0f}s"

    # 2. The advisor, with a small budget of training runs.
    out, seconds = run(
        "src.advise",
        *data,
        "budget=4t",
        *where,
        f"paths.output_dir={tmp_path}/advise-hydra",
        "candidates=[mobilenetv2,efficientnet_lite0]",
        "top_k=1",
        "rank.max_per_class=6",
        "search.max_epochs=1",
        "search.enqueue=[feature_extract,linear_probe]",
        "search.params.strategy.choices=[feature_extract,linear_probe]",
        "data.fractions=[0.5,1.0]",
        "data.seeds=[0]",
        "train_overrides=[" + ",".join(f"'{o}'" for o in TRAIN) + "]",
    )
    advice = json.loads(
        (tmp_path / "outputs" / "advise" / "imagefolder" / "advice.json").read_text()
    )
    winner = advice["winning_run"]
    assert winner and advice["command"].startswith("python -m src.train ")
    assert f"dataset.source.root={folder}" in advice["command"]
    assert "backbone.input_size=[3,48,48]" in advice["command"]
    assert "enable_progress_bar" not in advice["command"] and "paths." not in advice["command"]
    results = (tmp_path / "outputs" / "advise" / "imagefolder" / "RESULTS.md").read_text()
    assert winner in results
    tags = client.get_run(winner).data.tags
    assert tags["dataset"] == "imagefolder"
    steps["advise"] = f"winner {winner} ({advice['recommended']['strategy']}) in {seconds:.0f}s"

    # 3. The winning run, used at once: eval on its own data set, predict, export.
    out, seconds = run("src.eval", f"run_id={winner}", *where, f"hydra.run.dir={tmp_path}/eval")
    logged = client.get_run(winner).data.metrics
    assert 0 <= logged["eval/imagefolder/acc"] <= 1
    assert logged["eval/imagefolder/acc"] == pytest.approx(logged["test/acc"], abs=1e-6)
    steps["eval"] = f"eval/imagefolder/acc={logged['eval/imagefolder/acc']:.3f} in {seconds:.0f}s"

    picked = [files[0], files[PER_CLASS + 1], files[-1]]  # a PNG, a JPEG, another class
    table = tmp_path / "predictions.csv"
    out, seconds = run(
        "src.predict",
        f"run_id={winner}",
        f"images=[{','.join(map(str, picked))}]",
        "top_k=2",
        f"csv={table}",
        "explain=true",
        *where,
        f"hydra.run.dir={tmp_path}/predict",
    )
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 3 * 2 and all(row.split(",")[2] in PHOTOS for row in rows[1:])
    assert len(list((tmp_path / "explain").glob("*.npy"))) == 3  # a heatmap per file, beside
    steps["predict"] = f"top-2 labels and heatmaps for 3 files in {seconds:.0f}s"

    # 3b. Where it fails and what it looks at: a child run of the winner.
    out, seconds = run(
        "src.explain", f"run_id={winner}", "k=2", *where, f"hydra.run.dir={tmp_path}/explain-hydra"
    )
    (child,) = client.search_runs(
        [client.get_run(winner).info.experiment_id], f"tags.`mlflow.parentRunId` = '{winner}'"
    )
    assert child.data.tags["kind"] == "explain"
    assert (tmp_path / "explain-hydra" / "explain" / "gallery.png").is_file()
    steps["explain"] = f"child run {child.info.run_id} in {seconds:.0f}s"

    exports = tmp_path / "export"
    out, seconds = run(
        "src.export",
        f"run_id={winner}",
        "formats=[torchscript,onnx]",
        f"output_dir={exports}",
        *where,
        f"hydra.run.dir={tmp_path}/export-hydra",
    )
    check_exports(exports, winner, store, picked)
    steps["export"] = f"torchscript + onnx equal the checkpoint's logits, in {seconds:.0f}s"

    # 4. A report table over the runs.
    out, seconds = run(
        "src.report",
        "experiments=[advise]",
        "kind=advise_data",
        "rows=[backbone]",
        "columns=[strategy]",
        f"tracking_uri={store}",
        f"output_dir={tmp_path}/report",
        *where,
        f"hydra.run.dir={tmp_path}/report-hydra",
    )
    assert "|" in (tmp_path / "report" / "table.md").read_text()
    steps["report"] = f"table.md in {seconds:.0f}s"

    # 5. The MLflow UI's server finds every run of the store.
    from tests.helpers.servers import mlflow_server

    stored = all_runs(client)
    with mlflow_server(store, tmp_path / "served-artifacts") as url:
        served = all_runs(MlflowClient(url))
    assert served == stored and winner in served
    steps["mlflow server"] = f"{len(served)} runs served"
    steps["wall time"] = f"{time.perf_counter() - started:.0f}s"
    (tmp_path / "journey.json").write_text(json.dumps(steps, indent=1))
    print(json.dumps(steps, indent=1))


def all_runs(client: MlflowClient) -> set[str]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(experiments, max_results=10000)}


def check_exports(folder: Path, run_id: str, store: str, files: list[Path]) -> None:
    """TorchScript and ONNX outputs on real files equal the checkpoint's logits; the ONNX file
    stands alone and names its classes and preprocessing."""
    import onnx
    import onnxruntime
    from PIL import Image

    from src.data.preprocessing import eval_transform
    from src.inference.trained import data_config, load_model, locate

    assert not list(folder.glob("*.data"))  # a single .onnx file
    trained = locate(run_id, None, store)
    model = load_model(trained)
    config = data_config(model)
    batch = torch.stack([eval_transform(config)(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        expected = model(batch)
        scripted = torch.jit.load(str(folder / "model.pt"))(batch)
    torch.testing.assert_close(scripted, expected, atol=1e-4, rtol=0)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    exported = session.run(None, {"images": batch.numpy()})[0]
    np.testing.assert_allclose(exported, expected.numpy(), atol=1e-4, rtol=0)
    metadata = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(metadata["class_names"]) == sorted(PHOTOS) == trained.class_names
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["source_run_id"] == run_id
    assert provenance["input_size"] == json.loads(metadata["input_size"]) == [3, 48, 48]
    assert provenance["mean"] == json.loads(metadata["mean"])
