"""Main job: `python -m src.train backbone=resnet50 strategy=finetune`.

Runs straight through: build (and validate) everything, open the MLflow run, fit, test on the best
checkpoint, return the metrics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns every metric of the last epoch and of the test."""
    import lightning.pytorch as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    from src.errors import refuse_bad_input
    from src.models.module import TransferModule, check_optimizer
    from src.models.tasks import task_for
    from src.tracking import SameConfigOnEveryRank, record_failure
    from src.tracking.resume import config_fingerprint, resume_point, shared_with_ranks
    from src.tracking.secrets import redact
    from src.tracking.store import prepare_store

    # Hydra already prints (and files) every record; Lightning's own console handler would repeat them.
    logging.getLogger("lightning").handlers.clear()
    L.seed_everything(cfg.seed, workers=True)

    # 1. Everything that can refuse bad input comes before an MLflow run exists.
    with refuse_bad_input():
        datamodule, regularisation, backbone = build_data(cfg)
        task = task_for(datamodule.classes, datamodule.multilabel, datamodule.loss_weights)
        task.check(regularisation, cfg.monitor.metric)
        strategy = build(cfg.strategy)
        strategy.check(cfg.trainer.max_epochs, regularisation)
        regularisation.bind(backbone, pretrained=cfg.backbone.pretrained)
        optimizer = check_optimizer(build(cfg.optimizer))
    log.info("Strategy: %s", type(strategy).__name__)
    module = TransferModule(
        model=backbone,
        strategy=strategy,
        optimizer=optimizer,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        regularisation=regularisation,
        class_names=datamodule.classes,
        task=task,
    )

    # 2. Callbacks, loggers, trainer; a resumed job writes on in its old folder and MLflow run.
    # Unresolved: ${paths.output_dir} differs per launch, the choices behind it do not.
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=False))
    point = None
    if cfg.get("resume"):
        point = resume_point(
            str(cfg.resume), cfg.paths.tracking_uri, cfg.experiment_name, fingerprint
        )
    if point is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(point.output_dir)
    mlflow_configs = [c for c in (cfg.get("logger") or {}).values() if "MLFlow" in c._target_]
    # Every process, DDP ranks included: an MLflow client migrates a fresh store as it is built,
    # so the schema must exist first (file-locked for sqlite). No run is created here.
    for c in mlflow_configs:
        prepare_store(c.tracking_uri, c.experiment_name, c.get("artifact_location"))
    loggers = [
        instantiate(c, **({"run_id": point.run_id} if point and c in mlflow_configs else {}))
        for c in (cfg.get("logger") or {}).values()
    ]
    built = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks = [c for c in built if c is not None]  # a factory may switch its callback off
    if not loggers:  # Lightning refuses an LR monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(SameConfigOnEveryRank(fingerprint))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    # 3. The run: config in, fit, test, status out. Under DDP only global rank 0 writes (config,
    # MLflow run, checkpoints); the other ranks' MLflow loggers are no-ops (rank_zero_experiment).
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "config.yaml"
    if trainer.is_global_zero:
        # A password in a URL (a sweep's storage) is masked here as in the logged params.
        config_file.write_text(redact(OmegaConf.to_yaml(cfg, resolve=True)))
    try:
        if trainer.is_global_zero:
            open_run(cfg, loggers, point, fingerprint, datamodule, config_file)
        with shared_with_ranks(point):
            strategy.fit(trainer, module, datamodule, ckpt_path=point and str(point.checkpoint))
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if cfg.get("test"):
            metrics.update(strategy.test(trainer, module, datamodule))
    except BaseException as error:
        record_failure(loggers, error)
        raise
    return metrics


def open_run(cfg: DictConfig, loggers, point, fingerprint: str, datamodule, config_file: Path):
    """Rank 0's MLflow run: params, tags, the resolved config, similarity scores; a resumed run
    shows RUNNING again and keeps the params it was started with (MLflow refuses to change them)."""
    from src.similarity.tracking import attach_similarity, similarity_key
    from src.tracking import log_run_metadata, mlflow_loggers
    from src.tracking.resume import process_tags, reopen
    from src.tracking.secrets import redact

    tags = {**run_tags(cfg), **process_tags(config_file.parent, fingerprint)}
    tags["skipped_images"] = str(len(datamodule.source.skipped))
    params = {} if point else redact(OmegaConf.to_container(cfg, resolve=True))
    log_run_metadata(loggers, params, tags, config_file)
    for logger in mlflow_loggers(loggers) if point else ():
        reopen(logger, point)
    attach_similarity(loggers, similarity_key(cfg))  # the scores measured before training


def build_data(cfg: DictConfig):
    """(datamodule, regularisation, backbone): the data ready, preprocessed as the backbone wants."""
    from timm.data import resolve_model_data_config

    datamodule = build(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup()
    regularisation = build(cfg.regularisation)
    backbone = build(cfg.backbone, num_classes=datamodule.num_classes)
    data_config = resolve_model_data_config(backbone)
    log.info("Preprocessing from the backbone: %s", data_config)
    datamodule.set_transforms(*regularisation.transforms(data_config))
    return datamodule, regularisation, backbone


def build(node: DictConfig, **kwargs):
    """hydra's instantiate, re-raising a constructor's own error: Hydra's wrapper prints its repr,
    escaping the newlines of a message written to be read."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    # A mandatory value left at ??? (dataset.source.root of an image folder): Hydra drops it from
    # a partial, which then fails later with a TypeError. Named here instead.
    missing = sorted(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else []
    if missing:
        raise ValueError(
            f"{missing[0]} is required: add {missing[0]}=<value> to the command"
            + (f" (also missing: {', '.join(missing[1:])})." if missing[1:] else ".")
        )
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as wrapped:
        if wrapped.__cause__ is None:
            raise
        raise wrapped.__cause__ from None


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """What a researcher filters runs by in the MLflow UI."""
    from hydra.core.hydra_config import HydraConfig

    from src.tracking import git_state

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "backbone": cfg.backbone.name,
        "pretrained": str(cfg.backbone.pretrained),
        "strategy": choices.get("strategy", cfg.strategy._target_.rsplit(".", 1)[-1]),
        "dataset": choices.get("dataset", cfg.dataset.source._target_.rsplit(".", 1)[-1]),
        "regularisation": choices.get("regularisation", "custom"),
        "fraction": str(cfg.dataset.fraction),
        "samples_per_class": str(cfg.dataset.samples_per_class),
        "class_weights": str(cfg.dataset.get("class_weights")),
        "sampler": str(cfg.dataset.get("sampler", "shuffle")),
        "seed": str(cfg.seed),
        "study": str(cfg.get("study") or cfg.experiment_name),
        **git_state(PROJECT_ROOT),
    }


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import InvalidInput

    try:
        metrics = train(cfg)
    except InvalidInput as error:  # the message names the key and what is valid: no traceback
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a sweep this job fails (its trial FAIL) and the others go on
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    for key in sorted(k for k in metrics if k.startswith("test/") and "_class/" not in k):
        log.info("%s = %.4f", key, metrics[key])
    return metrics.get(cfg.monitor.metric)


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
