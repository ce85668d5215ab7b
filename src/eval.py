"""`python -m src.eval run_id=<id> dataset=digits_corrupted [split=test]`: score a trained model
on any data set with its training preprocessing; the metrics go into its MLflow run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def evaluate_run(cfg: DictConfig) -> dict[str, float]:
    """Refuse bad input, rebuild the model from its run, score the split, log into the run."""
    from src.config import build
    from src.data.preprocessing import batch_eval_transform, eval_transform
    from src.errors import refuse_bad_input
    from src.inference.evaluate import (
        check_classes,
        check_split,
        eval_prefix,
        evaluate,
        log_eval,
    )
    from src.inference.trained import data_config, load_model, locate

    # 1. Everything that can be wrong is checked before any data is scored.
    with refuse_bad_input():
        check_split(cfg.split)  # before any model or data is loaded
        trained = locate(cfg.run_id, cfg.ckpt_path, cfg.paths.tracking_uri, cfg.checkpoint)
        with open_dict(cfg):  # the run's seed: its train/val splits, not new ones
            cfg.seed = cfg.seed if cfg.seed is not None else trained.config["seed"]
            if cfg.get("dataset") is None:  # no dataset=: the run's own, exactly as trained
                cfg.dataset = OmegaConf.create(trained.config["dataset"])
                cfg.dataset.seed = cfg.seed
                cfg.dataset_name = trained.dataset_name
        model = load_model(trained)
        datamodule = build(cfg.dataset)
        datamodule.prepare_data()
        datamodule.setup()
        check_classes(model, datamodule, cfg.dataset_name, trained)
    # 2. The training's evaluation transform, from the backbone it rebuilt (never retyped).
    config = data_config(model)
    per_image, per_batch = eval_transform(config), batch_eval_transform(config)
    datamodule.set_transforms(per_image, per_image, per_batch, per_batch)
    # 3. Score and file.
    metrics = evaluate(model, datamodule, cfg.split, calibration=trained.probabilistic)
    prefix = eval_prefix(cfg.dataset_name, cfg.split)
    log_eval(trained, prefix, metrics)
    return {prefix + key: value for key, value in metrics.items()}


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import InvalidInput

    try:
        metrics = evaluate_run(cfg)
    except InvalidInput as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a multirun over data sets this one fails and the others go on
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    from src.tracking.store import done_line

    for key, value in sorted(metrics.items()):
        log.info("%s = %.4f", key, value)
    log.info(done_line(cfg.run_id, cfg.paths.output_dir, cfg.paths.tracking_uri))
    return next((v for k, v in metrics.items() if k.endswith("/acc")), None)


if __name__ == "__main__":
    from src.config import register_resolvers

    register_resolvers()  # conf/ resolves ${store_dir:...}
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
