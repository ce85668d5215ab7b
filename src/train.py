"""Main job: `python -m src.train backbone=resnet50 strategy=finetune`.

Runs straight through: build (and validate) everything, open the MLflow run, fit, test on the best
checkpoint, return the metrics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns every metric of the last epoch and of the test."""
    import lightning.pytorch as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor
    from timm.data import resolve_model_data_config

    from src.models.module import TransferModule
    from src.regularisation import eval_transform
    from src.similarity.tracking import attach_similarity, similarity_key
    from src.tracking import log_run_metadata, record_failure

    # Hydra already prints (and files) every record; Lightning's own console handler would repeat them.
    logging.getLogger("lightning").handlers.clear()
    L.seed_everything(cfg.seed, workers=True)

    # 1. Everything that can refuse bad input comes before an MLflow run exists.
    datamodule = build(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup()
    regularisation = build(cfg.regularisation)
    backbone = build(cfg.backbone, num_classes=datamodule.num_classes)
    data_config = resolve_model_data_config(backbone)
    log.info("Preprocessing from the backbone: %s", data_config)
    datamodule.set_transforms(
        regularisation.train_transform(data_config), eval_transform(data_config)
    )
    strategy = build(cfg.strategy)
    strategy.check(cfg.trainer.max_epochs, regularisation)
    regularisation.bind(backbone, pretrained=cfg.backbone.pretrained)
    log.info("Strategy: %s", type(strategy).__name__)
    module = TransferModule(
        model=backbone,
        strategy=strategy,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        regularisation=regularisation,
        class_names=datamodule.classes,
    )

    # 2. Callbacks, loggers, trainer.
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    built = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks = [c for c in built if c is not None]  # a factory may switch its callback off
    if not loggers:  # Lightning refuses an LR monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    # 3. The run: config in, fit, test, status out.
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        log_run_metadata(
            loggers, OmegaConf.to_container(cfg, resolve=True), run_tags(cfg), config_file
        )
        attach_similarity(loggers, similarity_key(cfg))  # the scores measured before training
        strategy.fit(trainer, module, datamodule)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if cfg.get("test"):
            metrics.update(strategy.test(trainer, module, datamodule))
    except BaseException as error:
        record_failure(loggers, error)
        raise
    return metrics


def build(node: DictConfig, **kwargs):
    """hydra's instantiate, re-raising a constructor's own error: Hydra's wrapper prints its repr,
    escaping the newlines of a message written to be read."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

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
        "seed": str(cfg.seed),
        **git_state(PROJECT_ROOT),
    }


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    for key in sorted(k for k in metrics if k.startswith("test/") and "acc_class" not in k):
        log.info("%s = %.4f", key, metrics[key])
    return metrics.get(cfg.monitor.metric)


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
