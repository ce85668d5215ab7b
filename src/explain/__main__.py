"""`python -m src.explain run_id=<id> [split=test] [method=gradcam] [layer=<module>] [k=8]`:
where a trained model fails and what it looks at, as a child MLflow run of the explained run."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from src.cli import entry_point

log = logging.getLogger(__name__)


@entry_point("explain", stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri})
def main(cfg: DictConfig) -> float | None:
    from src.explain.run import explain_run
    from src.tracking.store import done_line

    result = explain_run(cfg)  # in a multirun over runs a refusal fails that job, the others go on
    log.info(done_line(result["run_id"], result["output"], cfg.paths.tracking_uri))
    return next(iter(result["metrics"].values()))


if __name__ == "__main__":
    main()
