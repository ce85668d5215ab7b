"""`python -m src.eval run_id=<id> dataset=digits_corrupted [split=test]`: score a trained model
on any data set with its training preprocessing; the metrics go into its MLflow run."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

from src.cli import entry_point

log = logging.getLogger(__name__)


def evaluate_run(cfg: DictConfig) -> dict[str, float]:
    """Refuse bad input, rebuild the model from its run, score the split, log into the run."""
    from mlflow import MlflowClient

    from src.config import instantiate_node
    from src.data.preprocessing import batch_eval_transform, eval_transform
    from src.errors import refuse_bad_input
    from src.inference.evaluate import (
        check_classes,
        check_split,
        eval_prefix,
        evaluate_per_image,
        log_eval,
    )
    from src.inference.trained import data_config, load_model, locate
    from src.posthoc.tta import TestTimeAugmented, check_tta
    from src.tracking.predictions import eval_file, log_predictions

    # 1. Everything that can be wrong is checked before any data is scored.
    with refuse_bad_input():
        check_split(cfg.split)  # before any model or data is loaded
        trained = locate(cfg.run_id, cfg.ckpt_path, cfg.paths.tracking_uri, cfg.checkpoint)
        with open_dict(cfg):  # the run's seed: its train/val splits, not new ones
            cfg.seed = cfg.seed if cfg.seed is not None else trained.split_seed
            if cfg.get("dataset") is None:  # no dataset=: the run's own, exactly as trained
                cfg.dataset = OmegaConf.create(trained.config["dataset"])
                cfg.dataset.seed = cfg.seed
                cfg.dataset_name = trained.dataset_name
        model = load_model(trained)
        datamodule = instantiate_node(cfg.dataset)
        datamodule.prepare_data()
        datamodule.setup()
        check_classes(model, datamodule, cfg.dataset_name, trained)
        flip_changes_label = bool(cfg.dataset.get("flip_changes_label", False))
        tta = check_tta(cfg.get("tta"), flip_changes_label, cfg.dataset_name, trained.probabilistic)
    # 2. The training's evaluation transform, from the backbone it rebuilt (never retyped).
    config = data_config(model)
    per_image, per_batch = eval_transform(config), batch_eval_transform(config)
    datamodule.set_transforms(per_image, per_image, per_batch, per_batch)
    # 3. Score and file.
    metrics, plain = evaluate_per_image(model, datamodule, cfg.split, trained.probabilistic)
    per_image = {eval_file(cfg.dataset_name, cfg.split): plain}
    if tta:  # beside the plain metrics, under their own names: acc_tta, ece_tta, ...
        augmented, views = evaluate_per_image(TestTimeAugmented(model, tta), datamodule, cfg.split)
        metrics |= {f"{key}_tta": value for key, value in augmented.items()}
        per_image[eval_file(cfg.dataset_name, cfg.split, tta=True)] = views
    prefix = eval_prefix(cfg.dataset_name, cfg.split)
    run_id = log_eval(trained, prefix, metrics)
    if run_id is not None:  # per image, so a report can put an interval on these numbers
        client = MlflowClient(trained.tracking_uri)
        for file, pair in per_image.items():
            if pair is not None:
                log_predictions(client, run_id, cfg.paths.output_dir, *pair, file)
    return {prefix + key: value for key, value in metrics.items()}


@entry_point("eval", stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri})
def main(cfg: DictConfig) -> float | None:
    from src.tracking.store import done_line

    metrics = evaluate_run(cfg)  # a refusal in a multirun over data sets fails that job only

    for key, value in sorted(metrics.items()):
        log.info("%s = %.4f", key, value)
    log.info(done_line(cfg.run_id, cfg.paths.output_dir, cfg.paths.tracking_uri))
    return next((v for k, v in metrics.items() if k.endswith("/acc")), None)


if __name__ == "__main__":
    main()
