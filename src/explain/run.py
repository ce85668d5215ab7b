"""src.explain's job: check everything, rebuild the run's model as src.eval does, analyse the split,
draw the figures and file them in a child MLflow run (kind=explain) of the explained run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from src.explain import analysis as A
from src.explain import views as V
from src.explain.cams import Explainer, check_method

log = logging.getLogger(__name__)
KIND = "explain"


@dataclass
class Job:
    trained: object  # src.inference.trained.Trained
    model: torch.nn.Module
    explainer: Explainer
    datamodule: object
    asked: list[int]  # class indices asked for (classes=)
    config: dict  # the model's data config (mean, std, input size)


def prepare(cfg: DictConfig) -> Job:
    """Every check before any image is scored, then the data with the training's eval transform."""
    from src.config import instantiate_node
    from src.data.preprocessing import batch_eval_transform, eval_transform
    from src.errors import refuse_bad_input
    from src.explain.checks import check_classes_asked, check_run, check_same_classes
    from src.inference.evaluate import check_split
    from src.inference.trained import data_config, load_model, locate

    with refuse_bad_input():
        check_split(cfg.split)
        A.check_k(cfg.k)
        check_method(cfg.method)  # before the run is looked up
        check_run(cfg.run_id, cfg.paths.tracking_uri)
        trained = locate(cfg.run_id, None, cfg.paths.tracking_uri, cfg.checkpoint)
        with open_dict(cfg):  # the run's seed and data set unless given: the splits it saw
            cfg.seed = cfg.seed if cfg.seed is not None else trained.split_seed
            if cfg.get("dataset") is None:
                cfg.dataset = OmegaConf.create(trained.config["dataset"])
                cfg.dataset.seed = cfg.seed
                cfg.dataset_name = trained.dataset_name
        model = load_model(trained)
        explainer = Explainer(model, cfg.method, cfg.layer)
        asked = check_classes_asked(cfg.classes, trained.class_names)
        datamodule = instantiate_node(cfg.dataset)
        datamodule.prepare_data()
        datamodule.setup()
        check_same_classes(trained.class_names, datamodule.classes, cfg.dataset_name)
    config = data_config(model)
    per_image, per_batch = eval_transform(config), batch_eval_transform(config)
    datamodule.set_transforms(per_image, per_image, per_batch, per_batch)
    return Job(trained, model, explainer, datamodule, asked, config)


def image_names(datamodule, split: str) -> list[str]:
    """A file-name-safe name per image of the split: split and index into its images, plus the
    file's stem for an image folder."""
    images, indices = datamodule.images(split), getattr(datamodule.splits, split)
    paths = getattr(images, "paths", None)
    return [
        f"{split}{i:05d}" + (f"_{Path(paths[i]).stem}" if paths is not None else "")
        for i in indices
    ]


def select(datamodule, split: str, device, wanted: np.ndarray) -> torch.Tensor:
    """The model-ready images at positions `wanted` of the split, in that order."""
    wanted, chosen, start = list(map(int, wanted)), {}, 0
    lookup = set(wanted)
    for images, _ in datamodule.eval_batches(split, device):
        for position in lookup.intersection(range(start, start + len(images))):
            chosen[position] = images[position - start]
        start += len(images)
        if len(chosen) == len(lookup):
            break  # every wanted image seen: the rest of the split is not read
    return torch.stack([chosen[p] for p in wanted])


def explain_run(cfg: DictConfig) -> dict:
    """The child run's id, its output folder, the split's metrics and the gallery's indices."""
    from src.tracking.runs import log_params, run_status

    job = prepare(cfg)
    model, split = job.model, cfg.split
    device = next(model.parameters()).device
    batches = job.datamodule.eval_batches(split, device, cfg.batch_size)
    outputs = A.collect(model, batches, job.trained.probabilistic)
    out = Path(cfg.paths.output_dir) / "explain"
    names = [str(n) for n in job.trained.class_names]
    client, run_id = open_child(cfg, job)
    with run_status(client, run_id):
        log_params(client, run_id, params(cfg, job))
        metrics = {
            f"{split}/acc": float(outputs.correct.mean()),
            f"{split}/images": len(outputs.losses),
        }
        client.log_batch(run_id, metrics=_metrics(metrics))
        tables(client, run_id, outputs, names, out)
        top = A.top_losses(outputs, cfg.k)
        files = image_names(job.datamodule, split)
        V.gallery(job, outputs, top, names, files, split, out)
        V.correct_maps(job, outputs, cfg.k, names, files, split, out)
        V.feature_map(job, outputs, names, out, split, cfg.seed, cfg.max_points)
        client.log_artifacts(run_id, str(out))
    job.explainer.close()
    log.info("Explained run %s in child run %s: %s", cfg.run_id, run_id, out)
    return {"run_id": run_id, "output": out, "metrics": metrics, "top_losses": top.tolist()}


def open_child(cfg: DictConfig, job: Job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.paths.tracking_uri)
    parent = client.get_run(cfg.run_id)
    tags = {
        "mlflow.parentRunId": cfg.run_id,
        "kind": KIND,
        "method": job.explainer.method,
        "layer": job.explainer.layer,
        "dataset": str(cfg.dataset_name),
        "split": cfg.split,
    }
    name = f"explain-{job.explainer.method}-{parent.info.run_name}"
    run = client.create_run(parent.info.experiment_id, run_name=name, tags=tags)
    return client, run.info.run_id


def params(cfg: DictConfig, job: Job) -> dict:
    return {
        "explained_run": cfg.run_id,
        "checkpoint": str(job.trained.checkpoint),
        "method": job.explainer.method,
        "layer": job.explainer.layer,
        "split": cfg.split,
        "k": cfg.k,
        "classes": str(cfg.classes),
    }


def _metrics(values: dict):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, 0) for key, value in values.items()]


def tables(client, run_id: str, outputs: A.Outputs, names: list[str], out: Path) -> None:
    """Per-class accuracy (Wilson CI) and the most confused pairs: CSV + markdown files, and MLflow
    tables (the UI shows them in its artifact view)."""
    import pandas as pd

    from src.tracking.tables import write_table

    for stem, rows in (
        ("per_class_accuracy", A.per_class_accuracy(outputs, names)),
        ("confused_pairs", A.confused_pairs(outputs, names)),
    ):
        write_table(rows, out / "tables", stem)
        if rows:
            client.log_table(run_id, pd.DataFrame(rows), f"tables/{stem}.json")
        log.info("%s:\n%s", stem, (out / "tables" / f"{stem}.md").read_text())
