"""Main job: `python -m src.train backbone=resnet50 strategy=finetune`.

The entry point only: Hydra composes the config, src.training runs the job (build and validate
everything, open the MLflow run, fit, test on the best checkpoint). Nothing imports this module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import SIGTERM_EXIT, InvalidInput, is_sigterm
    from src.training import train

    hydra_cfg = HydraConfig.get()
    try:
        metrics = train(cfg, hydra_cfg.runtime.choices)
    except SystemExit as stop:
        if is_sigterm(stop):  # Lightning's SIGTERMException would exit 0: a stop is no success
            log.error("Stopped by SIGTERM: the run is KILLED; resume=auto continues it")
            raise SystemExit(SIGTERM_EXIT) from None
        raise
    except InvalidInput as error:  # the message names the key and what is valid: no traceback
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # in a sweep this job fails (its trial FAIL) and the others go on
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    return metrics.get(cfg.monitor.metric)  # train() logged the scores and the run: last line


if __name__ == "__main__":
    from src.config import register_resolvers

    register_resolvers()  # conf/ resolves ${store_dir:...}
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
