"""Main job: `python -m src.train backbone=resnet50 strategy=finetune`.

The entry point only: src.cli composes the config and answers errors, signals and exit codes;
src.training runs the job (build and validate everything, open the MLflow run, fit, test on the
best checkpoint). Nothing imports this module.
"""

from __future__ import annotations

from omegaconf import DictConfig

from src.cli import entry_point


@entry_point("train")  # its tracking URIs are checked with the rest of the config (preflight)
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from src.training import train

    metrics = train(cfg, HydraConfig.get().runtime.choices)
    return metrics.get(cfg.monitor.metric)  # train() logged the scores and the run: last line


if __name__ == "__main__":
    main()
