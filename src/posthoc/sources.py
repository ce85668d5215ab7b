"""The runs a post-hoc method starts from (their models, their data), and the new run it writes:
a folder with config.yaml and checkpoints/last.ckpt, and an MLflow run whose output_dir tag points
there, so src.eval, src.predict, src.export and src.report load it like a training run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.errors import InvalidInput
from src.inference.trained import Trained, data_config, load_checkpoint, load_model, locate
from src.tracking.kinds import POSTHOC_KINDS

log = logging.getLogger(__name__)

# Tags that describe one process or folder, not the model: never copied to a derived run.
PROCESS_TAGS = {"config_fingerprint", "output_dir", "host", "pid", "error"}
# Training state that means nothing for a derived model.
TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks")


@dataclass
class Source:
    """A trained run and its model, loaded (eval mode, on the CPU)."""

    trained: Trained
    model: nn.Module

    @property
    def run_id(self) -> str:
        return str(self.trained.run_id)


@dataclass
class Outcome:
    """What a method made: the model to save, what it was given, what it measured."""

    model: nn.Module
    params: dict[str, Any]
    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)
    parent: str | None = None  # the run id the new run is a child of (default: base's)
    base: Source | None = None  # the run whose config and checkpoint it extends (default: first)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value)
    # (y_true, y_pred) per test image: predictions/test_predictions.csv, as a training run has.
    test_predictions: tuple | None = None


def run_ids_of(run_ids, parent_run_id: str | None, tracking_uri: str) -> list[str]:
    """The run ids given, or the finished child runs of a sweep's or grid's parent run."""
    from mlflow.tracking import MlflowClient

    given = [run_ids] if isinstance(run_ids, str) else list(run_ids or [])
    if given and parent_run_id:
        raise InvalidInput("Give run_ids=[...] or parent_run_id=<id>, not both.")
    if not parent_run_id:
        return [str(run_id) for run_id in given]
    client = MlflowClient(tracking_uri)
    try:
        parent = client.get_run(parent_run_id)
    except Exception:
        raise InvalidInput(f"parent_run_id={parent_run_id}: no such MLflow run.") from None
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'",
    )
    # Trained runs only: an earlier soup of this sweep is its child too.
    return [
        run.info.run_id
        for run in children
        if run.data.tags.get("output_dir") and run.data.tags.get("kind") not in POSTHOC_KINDS
    ]


def load_sources(run_ids: list[str], tracking_uri: str, which: str) -> list[Source]:
    """Every run located and its model loaded; single-label models with probabilities only."""
    sources = []
    for run_id in run_ids:
        trained = locate(run_id, None, tracking_uri, which)
        model = load_model(trained)
        if trained.thresholds is not None or not trained.probabilistic:
            raise InvalidInput(
                f"run_id={run_id}: post-hoc methods take single-label models with probabilities "
                "(not a multi-label model, not an SVM head)."
            )
        sources.append(Source(trained, model))
    return sources


def check_same_architecture(sources: list[Source]) -> None:
    """Weights are averaged key by key: same backbone, input size, parameter shapes and classes."""
    first = sources[0]
    for other in sources[1:]:
        what = _difference(first, other)
        if what:
            raise InvalidInput(
                f"run {other.run_id} cannot be averaged with run {first.run_id}: {what}. "
                "Average runs of one architecture on one set of classes."
            )


def _difference(a: Source, b: Source) -> str | None:
    name_a, name_b = (s.trained.config["backbone"].get("name") for s in (a, b))
    if name_a != name_b:
        return f"backbone {name_b} vs {name_a}"
    size_a, size_b = (data_config(s.model)["input_size"] for s in (a, b))
    if tuple(size_a) != tuple(size_b):
        return f"input size {list(size_b)} vs {list(size_a)}"
    if a.trained.class_names != b.trained.class_names:
        return f"classes {b.trained.class_names[:10]} vs {a.trained.class_names[:10]}"
    shapes_a, shapes_b = ({k: v.shape for k, v in s.model.state_dict().items()} for s in (a, b))
    if shapes_a != shapes_b:
        return "different parameter names or shapes"
    return None


def source_data(source: Source, seed: int | None = None):
    """The source run's data set, its own seed (its train/val/test splits), with the evaluation
    transform of its backbone for every split."""
    from omegaconf import OmegaConf

    from src.config import instantiate_node
    from src.data.preprocessing import batch_eval_transform, eval_transform
    from src.inference.evaluate import check_classes

    node = OmegaConf.create(source.trained.config["dataset"])
    node.seed = seed if seed is not None else source.trained.split_seed
    datamodule = instantiate_node(node)
    datamodule.prepare_data()
    datamodule.setup()
    check_classes(source.model, datamodule, source.trained.dataset_name, source.trained)
    config = data_config(source.model)
    per_image, per_batch = eval_transform(config), batch_eval_transform(config)
    datamodule.set_transforms(per_image, per_image, per_batch, per_batch)
    return datamodule


def save_run(outcome: Outcome, sources: list[Source], kind: str, output_dir: Path) -> str:
    """The new model's folder and MLflow run (a child of outcome.parent or the first source), in
    the first source's experiment; returns the run id."""
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from src.tracking.predictions import log_predictions
    from src.tracking.runs import mlflow_run

    base = outcome.base or sources[0]
    parent = outcome.parent or base.run_id
    uri = base.trained.tracking_uri
    client = MlflowClient(uri)
    source_run = client.get_run(base.run_id)
    experiment = client.get_experiment(source_run.info.experiment_id).name
    output_dir.mkdir(parents=True, exist_ok=True)
    config = {**base.trained.config, "kind": kind, "posthoc": outcome.params}
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    checkpoint = write_checkpoint(base, outcome.model, kind, outcome.params, output_dir)
    tags = {k: v for k, v in source_run.data.tags.items() if not k.startswith("mlflow.")}
    tags = {k: v for k, v in tags.items() if k not in PROCESS_TAGS}
    tags |= {
        "kind": kind,
        "output_dir": str(output_dir.resolve()),
        "mlflow.parentRunId": parent,
        "source_run_ids": ",".join(s.run_id for s in sources),
    }
    name = f"{kind}-{source_run.data.tags.get('mlflow.runName', base.run_id)}"
    params = {**outcome.params, "source_run_ids": tags["source_run_ids"]}
    with mlflow_run(uri, experiment, None, name, tags, params) as (client, run_id):
        for key, value in outcome.metrics.items():
            client.log_metric(run_id, key, value)
        for key, points in outcome.series.items():
            for step, value in points:
                client.log_metric(run_id, key, value, step=step)
        client.log_artifact(run_id, str(output_dir / "config.yaml"))
        client.log_artifact(run_id, str(checkpoint), "last")
        for path in outcome.artifacts:
            client.log_artifact(run_id, str(path), kind)
        if outcome.test_predictions is not None:
            log_predictions(client, run_id, output_dir, *outcome.test_predictions)
    log.info("New %s run %s (child of %s), model in %s", kind, run_id, parent, checkpoint)
    return run_id


def write_checkpoint(
    base: Source, model: nn.Module, kind: str, params: dict, output_dir: Path
) -> Path:
    """The source's checkpoint (class names, head record, task state) with the new weights, and
    without training state: what load_model reads."""
    state = load_checkpoint(base.trained.checkpoint)
    for key in TRAINING_STATE:
        state.pop(key, None)
    others = {k: v for k, v in state["state_dict"].items() if not k.startswith("model.")}
    weights = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state["state_dict"] = {**weights, **others}
    state["posthoc"] = {"kind": kind, **_plain(params)}
    path = output_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _plain(params: dict) -> dict:
    """Params as strings, numbers and lists only: what the weights-only loader accepts."""
    return {k: v if isinstance(v, int | float | str | list) else str(v) for k, v in params.items()}
