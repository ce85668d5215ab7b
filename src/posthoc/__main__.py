"""`python -m src.posthoc method=calibrate|wise_ft|soup run_id=<id>` (soup: run_ids=[..] or
parent_run_id=<sweep>): a new model from trained runs, saved as a new MLflow run (a child of its
source) that src.eval, src.predict, src.export and src.report use like any run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


def posthoc_run(cfg: DictConfig) -> tuple[str, dict[str, float]]:
    """Refuse bad input, load the source runs and their data, apply the method, save the new
    run; returns (its MLflow run id, its metrics)."""
    from src.config import build
    from src.errors import InvalidInput, refuse_bad_input
    from src.posthoc.sources import load_sources, run_ids_of, save_run, source_data

    # 1. Method, runs, models and data are checked before anything is computed or written.
    with refuse_bad_input():
        method = build(cfg.method)
        uri = cfg.paths.tracking_uri
        if cfg.run_id and (cfg.run_ids or cfg.parent_run_id):
            raise InvalidInput("Give run_id=<id>, or run_ids=[...] / parent_run_id=<id>: one.")
        ids = [cfg.run_id] if cfg.run_id else run_ids_of(cfg.run_ids, cfg.parent_run_id, uri)
        if not ids:
            raise InvalidInput("No run given: run_id=<MLflow run id> (soup: run_ids=[a,b,...] "
                               "or parent_run_id=<the sweep's parent run>).")  # fmt: skip
        sources = load_sources(ids, uri, cfg.checkpoint)
        method.check(sources)
        datamodule = source_data(sources[0], cfg.seed)
    # 2. The method, then its model as a run of its own.
    output_dir = Path(cfg.paths.output_dir)
    outcome = method.apply(sources, datamodule, output_dir)
    outcome.parent = outcome.parent or cfg.parent_run_id  # a soup of a sweep: the sweep's child
    run_id = save_run(outcome, sources, method.kind, output_dir)
    return run_id, outcome.metrics


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="posthoc")
def main(cfg: DictConfig) -> None:
    from src.errors import InvalidInput
    from src.tracking.store import done_line

    try:
        run_id, metrics = posthoc_run(cfg)
    except InvalidInput as error:
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    for key, value in sorted(metrics.items()):
        log.info("%s = %.4f", key, value)
    log.info(done_line(run_id, cfg.paths.output_dir, cfg.paths.tracking_uri))


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
