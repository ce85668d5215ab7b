"""Lightning's loggers of a training run: its MLflow ones, the run's metadata, its failure."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from src.tracking.store import PATH_KEY

log = logging.getLogger(__name__)


def mlflow_loggers(loggers: list[Logger]) -> list[MLFlowLogger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat params, keys joined by '/', exactly as Lightning's loggers flatten
    what they log (a list of mappings is numbered; an empty list, being one, vanishes), so a
    config's params compare equal to those a run logged."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        elif isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                flat.update(flatten_params(item, f"{name}/{index}"))
        else:
            flat[name] = value
    return flat


def split_paths(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(params, path tags) of a nested config, flattened with '/' as Lightning's loggers do."""
    flat = flatten_params(params)
    paths = {key: str(value) for key, value in flat.items() if PATH_KEY.search(key)}
    return {key: value for key, value in flat.items() if key not in paths}, paths


def log_run_metadata(
    loggers: list[Logger], params: dict[str, Any], tags: dict[str, str], config_file: Path
) -> None:
    """Every logger gets the flattened config; MLflow also gets the tags and the resolved YAML.
    Paths in the config become tags (see PATH_KEY)."""
    params, paths = split_paths(params)
    for logger in loggers:
        logger.log_hyperparams(params)
    for logger in mlflow_loggers(loggers):
        for key, value in {**paths, **tags}.items():
            logger.experiment.set_tag(logger.run_id, key, str(value)[:5000])
        logger.experiment.log_artifact(logger.run_id, str(config_file))
        # _tracking_uri: the URI it was given; MLFlowLogger keeps it in no public attribute.
        log.info("MLflow run %s in %s", logger.run_id, logger._tracking_uri)


def log_dataset(loggers: list[Logger], name: str, source: dict, datamodule, subset: dict) -> None:
    """The run's data set as an MLflow input (the UI's Datasets column): its name, where the
    images come from, a digest of the exact images of every split, and the split sizes with the
    subsampling that made them (fraction, samples per class) as its profile."""
    import hashlib
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    splits = datamodule.splits
    sizes = {split: len(getattr(splits, split)) for split in ("train", "val", "test")}
    digest = hashlib.sha1(
        json.dumps([datamodule.identity(split) for split in sizes], sort_keys=True).encode()
    ).hexdigest()[:12]
    profile = {
        **{f"{split}_images": n for split, n in sizes.items()},
        "classes": len(datamodule.classes),
        **subset,
    }
    local = any(key in source for key in ("root", "path"))
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local" if local else "code",
        source=json.dumps(source, sort_keys=True, default=str),
        profile=json.dumps(profile),
    )
    context = [InputTag("mlflow.data.context", "training")]
    for logger in mlflow_loggers(loggers):
        logger.experiment.log_inputs(logger.run_id, [DatasetInput(dataset, context)])


def record_failure(loggers: list[Logger], error: BaseException) -> None:
    """End MLflow runs FAILED (KILLED on SIGTERM or Ctrl-C) with the reason as a tag, whatever
    stage failed: `error` for a failure, `killed_reason` for an interruption.

    A run stopped by an Optuna pruner did what it was asked: FINISHED, tagged `pruned`."""
    from optuna import TrialPruned

    from src.errors import is_sigterm
    from src.tracking.claim import KILLED_REASON

    interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
    pruned = isinstance(error, TrialPruned)
    status = "FINISHED" if pruned else "KILLED" if interrupted else "FAILED"
    if pruned:
        tag = ("pruned", "true")
    elif interrupted:
        tag = (KILLED_REASON, "SIGTERM" if is_sigterm(error) else type(error).__name__)
    else:
        tag = ("error", f"{type(error).__name__}: {error}")
    for logger in mlflow_loggers(loggers):
        if logger._initialized:  # no public flag says whether its run was ever created
            logger.experiment.set_tag(logger.run_id, tag[0], tag[1][:5000])
            logger.experiment.set_terminated(logger.run_id, status)


class TrainingMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for one training job's run (conf/logger/mlflow.yaml), with what a
    job needs beyond it, as methods rather than patches:

    - `skip_recorded`: a resumed run logs only points it lacks. MLflow cannot delete a point; a
      step already recorded keeps its first value (a deterministic resume computes the same one),
      so every metric has one point per step (src/tracking/resume.py's reopen sets it).
    - `hold_success` / `finish`: Lightning ends the run FINISHED when fit ends, before the test; a
      job killed in its test would leave a FINISHED run without test scores, which resume=auto
      never continues. "success" waits for `finish()`; failures still go through at once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded: dict[str, set[int]] = {}
        self.success_held = False

    def skip_recorded(self, recorded: dict[str, set[int]]) -> None:
        self.recorded = recorded

    def hold_success(self) -> None:
        self.success_held = True

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        fresh = {
            k: v for k, v in metrics.items() if step is None or step not in self.recorded.get(k, ())
        }
        if fresh:
            super().log_metrics(fresh, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status == "success" and self.success_held:
            return  # the job calls finish() once its test ran
        super().finalize(status)

    def finish(self) -> None:
        self.success_held = False
        self.finalize("success")


def finish_at_the_end(loggers: list[Logger]):
    """Hold back each training-run logger's "success" until the returned finish() (see
    TrainingMLFlowLogger); a plain MLFlowLogger ends its run when fit ends, as Lightning does."""
    mlflow = mlflow_loggers(loggers)
    held = [logger for logger in mlflow if isinstance(logger, TrainingMLFlowLogger)]
    for logger in mlflow:
        if logger not in held:
            log.warning("%s ends its run FINISHED before the test", type(logger).__name__)
    for logger in held:
        logger.hold_success()

    def finish() -> None:
        for logger in held:
            logger.finish()

    return finish
