"""`python -m src.similarity backbone=efficientnet_lite0 dataset=fashion_mnist [+source=mnist]`

Scores one (backbone, data set) pair before any training; with +source=<dataset> also the domain
similarity of the two data sets in the backbone's feature space. One MLflow run, tagged
kind=similarity; scores.{json,csv,md} in the output directory and as artifacts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from src.cli import entry_point

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


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_knobs(cfg: DictConfig) -> None:
    """Type and range of every option, before any data or model (a string is a refusal too)."""
    if not is_int(cfg.knn_k) or cfg.knn_k < 1:
        raise ValueError(f"knn_k={cfg.knn_k!r}: an integer >= 1.")
    if cfg.max_per_class is not None and (not is_int(cfg.max_per_class) or cfg.max_per_class < 2):
        raise ValueError(f"max_per_class={cfg.max_per_class!r}: an integer >= 2, or null (all).")
    if not is_int(cfg.seed) or cfg.seed < 0:
        raise ValueError(f"seed={cfg.seed!r}: an integer >= 0.")


def check_knn_k(knn_k: int, train_images: int) -> None:
    """kNN with k near the training set's size votes the majority class for every image: a
    chance-level score that runs would attach and the advisor rank on. Refused, with the limit."""
    limit = max(1, train_images // 2)
    if knn_k > limit:
        raise ValueError(
            f"knn_k={knn_k}: the training split has {train_images} images; k must be <= "
            f"{limit} (half of them) for kNN accuracy to mean anything."
        )


def measure(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> dict[str, float]:
    """Score the pair; `choices`: the job's config-group choices (the `dataset` and `source` tags)."""
    from timm.data import resolve_model_data_config

    from src.config import instantiate_node
    from src.data.preprocessing import eval_transform
    from src.errors import refuse_bad_input
    from src.outputs import check_output_folder
    from src.similarity import measure as m
    from src.similarity.tracking import KIND, log_scores, similarity_key
    from src.tracking import git_state
    from src.tracking.resume import config_fingerprint
    from src.tracking.runs import mlflow_run
    from src.tracking.store import done_line
    from src.tracking.tables import write_table

    # 1. Everything that can refuse bad input comes before an MLflow run exists.
    with refuse_bad_input():
        check_knobs(cfg)
        check_output_folder(cfg.paths.output_dir, "paths.output_dir")
        if not is_int(cfg.score_resamples) or cfg.score_resamples < 0:
            raise ValueError(f"score_resamples={cfg.score_resamples!r}: an integer >= 0.")
        estimators = m.check_estimators(cfg.estimators)
        target = instantiate_node(cfg.dataset)
        source = instantiate_node(cfg.source) if cfg.get("source") else None
        # keeps its source head: LEEP, NCE read it
        model = instantiate_node(cfg.backbone, num_classes=None)
        transform = eval_transform(resolve_model_data_config(model))
        for datamodule in filter(None, (target, source)):
            m.load_subsampled(datamodule, transform, cfg.max_per_class)
        check_knn_k(cfg.knn_k, len(target.splits.train))
    choices = choices or {}
    key = similarity_key(cfg, choices)
    # The same fingerprint as a training run's: a study driver reuses a finished run by it.
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=False))
    tags = {"kind": KIND, **key, "source": choices.get("source") or "pretrain"}
    tags["config_fingerprint"] = fingerprint
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
        scores = m.transferability(model, target, cfg.cache_dir, cfg.knn_k, cfg.seed, estimators)
        if source is not None:
            scores.update(m.domain(model, target, source, cfg.cache_dir, cfg.seed))
        log_scores(client, run_id, scores)
        if cfg.score_resamples:  # for intervals: the scores on resampled training images
            rows = m.score_resamples(
                model, target, cfg.cache_dir, cfg.knn_k, cfg.seed, estimators, cfg.score_resamples
            )
            for path in write_table(rows, output_dir, "score_resamples"):
                client.log_artifact(run_id, str(path))
        row = {**{k: tags[k] for k in ("backbone", "dataset", "dataset_key", "source")}, **scores}
        (output_dir / "scores.json").write_text(json.dumps(row, indent=1))
        files = [output_dir / "scores.json", output_dir / "config.yaml"]
        for path in [*files, *write_table([row], output_dir, "scores")]:
            client.log_artifact(run_id, str(path))
    for name, value in scores.items():
        log.info("similarity/%s = %.4f", name, value)
    log.info(done_line(run_id, output_dir, cfg.paths.tracking_uri))
    return scores


@entry_point("similarity", stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri})
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    scores = measure(cfg, HydraConfig.get().runtime.choices)  # a multirun goes on
    return scores.get("logme", next(iter(scores.values())))


if __name__ == "__main__":
    register_sources()
    main()
