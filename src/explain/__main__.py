"""`python -m src.explain run_id=<id> [split=test] [method=gradcam] [layer=<module>] [k=8]`:
where a trained model fails and what it looks at, as a child MLflow run of the explained run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="explain")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import InvalidInput
    from src.explain.run import explain_run
    from src.tracking.store import done_line

    try:
        result = explain_run(cfg)
    except InvalidInput as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a multirun over runs this one fails and the others go on
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    log.info(done_line(result["run_id"], result["output"], cfg.paths.tracking_uri))
    return next(iter(result["metrics"].values()))


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
