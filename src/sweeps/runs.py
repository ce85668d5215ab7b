"""MLflow for a sweep: one parent run per study, the trials' own runs nested under it.

The parent's id lives in the study (user attr `mlflow_parent_run_id`), so every worker and every
resumed sweep of the study reuses it; each trial's job finds it there too (see TrialReporter).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
# The tracking store the study's runs are in (password masked): a study belongs to one store.
STORE_ATTR = "mlflow_tracking_uri"


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def open_parent(study: optuna.Study, mlflow_cfg: dict[str, Any], params: dict[str, Any]) -> str:
    """The study's parent run, created on first use (call under the study lock)."""
    from src.tracking.runs import log_params, reopen, start_run

    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        check_same_store(study, mlflow_cfg["tracking_uri"], run_id)
    mlf = client(mlflow_cfg["tracking_uri"])
    if run_id:
        return reopen(mlf, run_id)  # a resumed or second worker's sweep
    run_id = start_run(
        mlf,
        mlflow_cfg["experiment_name"],
        mlflow_cfg.get("artifact_location"),
        f"study-{study.study_name}",
        {"optuna.study": study.study_name, "sweep": "optuna", "kind": "sweep"},
    )
    log_params(mlf, run_id, {key: str(value) for key, value in params.items()})  # not nested
    study.set_user_attr(PARENT_ATTR, run_id)
    study.set_user_attr(STORE_ATTR, redact(str(mlflow_cfg["tracking_uri"])))
    log.info("MLflow parent run %s for study %s", run_id, study.study_name)
    return run_id


def check_same_store(study: optuna.Study, tracking_uri: str, run_id: str) -> None:
    """A study continued under another tracking store is refused in one line: its trials' runs
    and its parent run are in the store it was started with (a study from before STORE_ATTR: its
    parent run must be in this store)."""
    from mlflow.exceptions import MlflowException

    from src.errors import InvalidInput

    recorded = study.user_attrs.get(STORE_ATTR)
    here = redact(str(tracking_uri))
    if recorded is None:
        try:
            client(tracking_uri).get_run(run_id)
            return
        except MlflowException:
            recorded = "another tracking store"
    if recorded != here:
        raise InvalidInput(
            f"study {study.study_name!r} belongs to {recorded} (its MLflow parent run {run_id}), "
            f"not to {here}: use that store, or another study name or Optuna storage for this "
            "one (a sweep's hydra.sweeper.study_name / .storage, the advisor's search.storage)."
        )


def redact(uri: str) -> str:
    from src.tracking.secrets import redact as masked

    return masked(uri)


def end_interrupted(study: optuna.Study, tracking_uri: str, error: BaseException) -> None:
    """SIGTERM or Ctrl-C: the study's parent run ends KILLED with the signal as its reason (a
    re-run of the sweep reopens it, open_parent), never left RUNNING."""
    from src.errors import is_sigterm
    from src.tracking.claim import KILLED_REASON

    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return
    mlf = client(tracking_uri)
    if mlf.get_run(run_id).info.status == "RUNNING":
        reason = "SIGTERM" if is_sigterm(error) else type(error).__name__
        mlf.set_tag(run_id, KILLED_REASON, reason)
        mlf.set_terminated(run_id, "KILLED")


def tag_trial(tracking_uri: str, trial: optuna.trial.FrozenTrial) -> None:
    """Trial number and final state on the trial's own run; a pruned run is tagged `pruned`."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if not run_id:
        return
    mlf = client(tracking_uri)
    mlf.set_tag(run_id, "optuna.trial.number", str(trial.number))
    mlf.set_tag(run_id, "optuna.trial.state", trial.state.name)
    if trial.state == TrialState.PRUNED:
        mlf.set_tag(run_id, "pruned", "true")
    elif trial.state == TrialState.FAIL and mlf.get_run(run_id).info.status == "RUNNING":
        mlf.set_terminated(run_id, "KILLED")  # its process died before it could say so


def summarise(study: optuna.Study, tracking_uri: str, out_dir: Path, finished: bool) -> None:
    """Best value and parameters, trial counts and Optuna's plots on the parent run."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return
    mlf = client(tracking_uri)
    trials = study.get_trials(deepcopy=False)
    for state in TrialState:
        mlf.log_metric(
            run_id, f"trials/{state.name.lower()}", sum(t.state == state for t in trials)
        )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        mlf.log_metric(run_id, "best_value", best.value, step=len(complete))
        mlf.set_tag(run_id, "best_trial", str(best.number))
        for name, value in best.params.items():
            mlf.set_tag(run_id, f"best.{name}", str(value))
        out_dir.mkdir(parents=True, exist_ok=True)
        best_file = out_dir / "best.json"
        best_file.write_text(
            json.dumps(
                {"number": best.number, "value": best.value, "params": best.params}, indent=1
            )
        )
        mlf.log_artifact(run_id, str(best_file))
        for path in plot_study(study, out_dir / "plots"):
            mlf.log_artifact(run_id, str(path), artifact_path="plots")
    if finished:
        mlf.set_terminated(run_id, "FINISHED")


def plot_study(study: optuna.Study, plot_dir: Path) -> list[Path]:
    """Optuna's own matplotlib plots; one that cannot be drawn yet (too few trials) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (
        ("optimization_history", vis.plot_optimization_history),
        ("param_importances", vis.plot_param_importances),
        ("parallel_coordinate", vis.plot_parallel_coordinate),
        ("intermediate_values", vis.plot_intermediate_values),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every call
                axes = plot(study)
            figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
            figure.savefig(plot_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(plot_dir / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            log.info("Optuna plot %s skipped: %s", name, error)
    return written
