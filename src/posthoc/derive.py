"""One post-hoc job, without Hydra: what `python -m src.posthoc` and the end-of-training
calibration callback both run."""

from __future__ import annotations

from pathlib import Path

from src.errors import InvalidInput


def derive(
    method,
    run_ids: list[str],
    tracking_uri: str,
    checkpoint: str,
    seed: int | None,
    output_dir: str | Path,
    parent_run_id: str | None = None,
) -> tuple[str, dict[str, float]]:
    """Load the runs and their data (every check before any work), apply the method, save the
    new run; returns (its MLflow run id, its metrics)."""
    from src.errors import refuse_bad_input
    from src.posthoc.sources import load_sources, save_run, source_data

    # 1. Runs, models and data are checked before anything is computed or written.
    with refuse_bad_input():
        if not run_ids:
            raise InvalidInput(
                "No run given: run_id=<MLflow run id> (soup: run_ids=[a,b,...] "
                "or parent_run_id=<the sweep's parent run>)."
            )
        sources = load_sources(run_ids, tracking_uri, checkpoint)
        method.check(sources)
        datamodule = source_data(sources[0], seed)
    # 2. The method, then its model as a run of its own.
    output_dir = Path(output_dir)
    outcome = method.apply(sources, datamodule, output_dir)
    outcome.parent = outcome.parent or parent_run_id  # a soup of a sweep: the sweep's child
    return save_run(outcome, sources, method.kind, output_dir), outcome.metrics
