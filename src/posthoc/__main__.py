"""`python -m src.posthoc method=calibrate|wise_ft|soup run_id=<id>` (soup: run_ids=[..] or
parent_run_id=<sweep>): a new model from trained runs, saved as a new MLflow run (a child of its
source) that src.eval, src.predict, src.export and src.report use like any run."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from src.cli import entry_point

log = logging.getLogger(__name__)


def posthoc_run(cfg: DictConfig) -> tuple[str, dict[str, float]]:
    """The method and the runs from the command line; returns (the new run's id, its metrics)."""
    from src.config import instantiate_node
    from src.errors import InvalidInput, refuse_bad_input
    from src.posthoc.derive import derive
    from src.posthoc.sources import run_ids_of

    with refuse_bad_input():
        method = instantiate_node(cfg.method)
        uri = cfg.paths.tracking_uri
        if cfg.run_id and (cfg.run_ids or cfg.parent_run_id):
            raise InvalidInput("Give run_id=<id>, or run_ids=[...] / parent_run_id=<id>: one.")
        ids = [cfg.run_id] if cfg.run_id else run_ids_of(cfg.run_ids, cfg.parent_run_id, uri)
    output_dir = cfg.paths.output_dir
    return derive(method, ids, uri, cfg.checkpoint, cfg.seed, output_dir, cfg.parent_run_id)


@entry_point("posthoc", stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri})
def main(cfg: DictConfig) -> None:
    from src.tracking.store import done_line

    run_id, metrics = posthoc_run(cfg)
    for key, value in sorted(metrics.items()):
        log.info("%s = %.4f", key, value)
    log.info(done_line(run_id, cfg.paths.output_dir, cfg.paths.tracking_uri))


if __name__ == "__main__":
    main()
