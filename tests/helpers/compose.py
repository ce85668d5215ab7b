"""Compose conf/<name>.yaml as its entry point would get it, with everything it writes (runs,
outputs, the MLflow store) redirected into a test's folder; and read back what a job logged."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from src.config import CONF_DIR as CONF_DIR  # what tests list conf/ groups from
from src.config import compose, load


def compose_raw(name: str, overrides=(), hydra: bool = False) -> DictConfig:
    """conf/<name>.yaml composed as it is; with hydra=True, its hydra node too."""
    return load(name, overrides, hydra)


def compose_config(
    name: str, root: Path | None, overrides=(), output_dir: Path | None = None
) -> DictConfig:
    """conf/<name>.yaml as @hydra.main hands it over (src.config.compose): HydraConfig holds the
    job (its choices: `choices()`). With a root, everything the job writes (outputs, the MLflow
    store) goes there."""
    cfg, _ = compose(overrides, name)
    if root is None:
        return cfg
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        cfg.paths.tracking_uri = f"sqlite:///{root}/mlflow.db"
        if "dataset" in cfg:
            cfg.dataset.num_workers = 0
    return cfg


def choices() -> dict[str, str]:
    """The config-group choices of the job composed last, as an entry point passes them on."""
    return dict(HydraConfig.get().runtime.choices)


def train(cfg: DictConfig) -> dict[str, float]:
    """src.training.train(cfg, choices) of a config composed here, as `python -m src.train` runs it."""
    from src.training import train as train_job

    return train_job(cfg, choices())


def compose_train(tmp_path: Path, overrides=()) -> DictConfig:
    """conf/train.yaml with everything it writes redirected into tmp_path."""
    return compose_config("train", tmp_path, overrides, output_dir=tmp_path / "run")


def compose_entry(name: str, root: Path, overrides) -> DictConfig:
    """conf/<name>.yaml (eval, predict, export) writing into root, like compose_train."""
    return compose_config(name, root, overrides)


def only_run(cfg: DictConfig):
    """The one MLflow run a composed job logged (fails if there is not exactly one)."""
    import mlflow

    client = mlflow.MlflowClient(cfg.paths.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    return run


def artifact_paths(client, run_id, path=None) -> set[str]:
    """Every artifact file of a run, folders walked."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found
