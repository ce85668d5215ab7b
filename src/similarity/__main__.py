"""`python -m src.similarity backbone=efficientnet_lite0 dataset=fashion_mnist [+source=mnist]`

Scores one (backbone, data set) pair before any training; with +source=<dataset> also the domain
similarity of the two data sets in the backbone's feature space. One MLflow run, tagged
kind=similarity; scores.{json,csv,md} in the output directory and as artifacts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
log = logging.getLogger(__name__)


def register_sources() -> None:
    """`+source=<name>`: every data set config, composed a second time under the key `source`."""
    store = ConfigStore.instance()
    for path in sorted((CONF_DIR / "dataset").glob("[!_]*.yaml")):
        store.store(
            group="source", name=path.stem, node={"defaults": [{"/dataset@_here_": path.stem}]}
        )


def measure(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> dict[str, float]:
    """Score the pair; `choices`: the job's config-group choices (the `dataset` and `source` tags)."""
    from timm.data import resolve_model_data_config

    from src.config import build
    from src.data.preprocessing import eval_transform
    from src.errors import refuse_bad_input
    from src.similarity import measure as m
    from src.similarity.tracking import KIND, log_scores, similarity_key
    from src.tracking import git_state
    from src.tracking.runs import mlflow_run
    from src.tracking.store import done_line
    from src.tracking.tables import write_table

    # 1. Everything that can refuse bad input comes before an MLflow run exists.
    with refuse_bad_input():
        if cfg.knn_k < 1:
            raise ValueError(f"knn_k={cfg.knn_k}: must be >= 1.")
        target = build(cfg.dataset)
        source = build(cfg.source) if cfg.get("source") else None
        model = build(cfg.backbone, num_classes=None)  # keeps its source head: LEEP, NCE read it
        transform = eval_transform(resolve_model_data_config(model))
        for datamodule in filter(None, (target, source)):
            m.prepare(datamodule, transform, cfg.max_per_class)
    choices = choices or {}
    key = similarity_key(cfg, choices)
    tags = {"kind": KIND, **key, "source": choices.get("source") or "pretrain"}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    # 2. The run: scores, table, artifacts.
    params = OmegaConf.to_container(cfg, resolve=True)
    with mlflow_run(
        cfg.paths.tracking_uri,
        cfg.experiment_name,
        cfg.paths.artifact_location,
        cfg.run_name,
        {**tags, **git_state(PROJECT_ROOT)},
        params,
    ) as (client, run_id):
        scores = m.transferability(model, target, cfg.cache_dir, cfg.knn_k, cfg.seed)
        if source is not None:
            scores.update(m.domain(model, target, source, cfg.cache_dir, cfg.seed))
        log_scores(client, run_id, scores)
        row = {**{k: tags[k] for k in ("backbone", "dataset", "dataset_key", "source")}, **scores}
        (output_dir / "scores.json").write_text(json.dumps(row, indent=1))
        files = [output_dir / "scores.json", output_dir / "config.yaml"]
        for path in [*files, *write_table([row], output_dir, "scores")]:
            client.log_artifact(run_id, str(path))
    for name, value in scores.items():
        log.info("similarity/%s = %.4f", name, value)
    log.info(done_line(run_id, output_dir, cfg.paths.tracking_uri))
    return scores


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="similarity")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import InvalidInput

    try:
        scores = measure(cfg, HydraConfig.get().runtime.choices)
    except InvalidInput as error:  # one line naming the key, exit 2; a multirun goes on
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    return scores["logme"]


if __name__ == "__main__":
    from src.config import register_resolvers

    register_resolvers()  # conf/ resolves ${store_dir:...}
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    register_sources()
    main()
