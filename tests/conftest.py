"""Shared fixtures: compose the real conf/train.yaml and shrink it (lightning-hydra-template style)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_train(tmp_path: Path, overrides: list[str] = ()) -> DictConfig:
    """conf/train.yaml with everything it writes redirected into tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
        cfg.dataset.num_workers = 0
        del cfg.hydra
    return cfg


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Seconds-long real training: digits at 32 px, a few batches."""
    return [
        "dataset=digits",
        "backbone.input_size=[3,32,32]",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def only_run(cfg: DictConfig):
    """The one MLflow run a composed job logged (fails if there is not exactly one)."""
    import mlflow

    client = mlflow.MlflowClient(cfg.paths.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    return run


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on loopback for the test module (tests/servers.py)."""
    from tests.servers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`mlflow server` with a PostgreSQL backend store and an artifact destination: what
    docs/cluster.md sets up for workers on several machines. Yields (url, artifacts folder)."""
    from tests.servers import create_database, mlflow_server

    artifacts = tmp_path_factory.mktemp("mlflow-server") / "artifacts"
    artifacts.mkdir()
    with mlflow_server(create_database(postgres, "mlflow"), artifacts) as url:
        yield url, artifacts


@pytest.fixture(autouse=True)
def _tracking_uri_stays_per_test():
    """mlflow.set_tracking_uri (Lightning's MLFlowLogger calls it) also exports
    MLFLOW_TRACKING_URI to this process; left set, a later test's config (paths.tracking_uri reads
    it) and its subprocesses would write into an earlier test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
