"""One training job: build (and validate) everything, open the MLflow run, fit, test on the best
checkpoint, return the metrics. `python -m src.train` (src/train.py) is its entry point; the
advisor, the bench and the tests call `train(cfg, choices)` with a config from src.config.compose.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def train(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> dict[str, float]:
    """Fit and test one configuration; returns every metric of the last epoch and of the test.
    `choices`: the job's config-group choices (run tags; src.config.run_tags)."""
    import lightning.pytorch as L

    from src.errors import refuse_bad_input, sigterm_raises
    from src.preflight import check_config

    # Hydra already prints (and files) every record; Lightning's own console handler would repeat them.
    logging.getLogger("lightning").handlers.clear()
    # 1. One validation pass: everything that can refuse bad input, the resume target claimed
    # last, before any MLflow run, store or folder exists.
    with sigterm_raises() as sigterm:
        with refuse_bad_input():
            check_config(cfg)
            L.seed_everything(cfg.seed, workers=True)
            job = prepare(cfg, choices)
        try:
            return job.run(sigterm)
        finally:
            job.release()


class Job:
    """A validated job: its objects built, its resume point (if any) claimed."""

    def __init__(self, cfg: DictConfig, choices, datamodule, strategy, module, point, fingerprint):
        self.cfg, self.choices, self.datamodule = cfg, choices, datamodule
        self.strategy, self.module, self.point, self.fingerprint = (
            strategy,
            module,
            point,
            fingerprint,
        )
        self.lock = point.lock if point else None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def run(self, sigterm) -> dict[str, float]:
        """2. Store, loggers, trainer; 3. config in, fit, test, status out. Under DDP only global
        rank 0 writes (config, MLflow run, checkpoints); the other ranks' MLflow loggers are
        no-ops (rank_zero_experiment). A resumed job writes on in its old folder and run."""
        from src.tracking.claim import RunLock
        from src.tracking.loggers import finish_at_the_end, record_failure
        from src.tracking.resume import shared_with_ranks
        from src.tracking.secrets import redact

        cfg, point = self.cfg, self.point
        if point is not None and point.checkpoint is None:
            return finished_metrics(cfg, point.run_id)  # completed by the process we waited for
        if point is not None:
            with open_dict(cfg):
                cfg.paths.output_dir = str(point.output_dir)
        loggers, trainer = build_trainer(cfg, point, self.fingerprint)
        finish = finish_at_the_end(loggers)
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.lock is None and trainer.is_global_zero:  # a fresh run: this process owns it
            self.lock = RunLock(output_dir)
            if not self.lock.acquire():
                raise RuntimeError(f"{output_dir} is in use by another training process.")
        config_file = output_dir / "config.yaml"
        if trainer.is_global_zero:
            # A password in a URL (a sweep's storage) is masked here as in the logged params.
            config_file.write_text(redact(OmegaConf.to_yaml(cfg, resolve=True)))
        try:
            if trainer.is_global_zero:
                open_run(
                    cfg, self.choices, loggers, point, self.fingerprint, self.datamodule,
                    config_file,
                )  # fmt: skip
            checkpoint = point and str(point.checkpoint)
            with shared_with_ranks(point):
                self.strategy.fit(trainer, self.module, self.datamodule, ckpt_path=checkpoint)
            sigterm.check()
            metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
            metrics.update(best_monitored(trainer, cfg.monitor.metric))
            if cfg.get("test"):
                metrics.update(self.strategy.test(trainer, self.module, self.datamodule))
                sigterm.check()
            if trainer.is_global_zero:
                finish()
        except BaseException as error:
            record_failure(loggers, error)
            raise
        if trainer.is_global_zero:
            report_outcome(metrics, loggers, output_dir)
        return metrics


def best_monitored(trainer, metric: str) -> dict[str, float]:
    """The monitored metric of the checkpoint the run keeps (tested, exported), not of the last
    epoch: what a sweep's objective and the advisor's ranking must describe."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.monitor != metric or callback.best_model_score is None:
        return {}
    return {metric: float(callback.best_model_score)}


def prepare(cfg: DictConfig, choices) -> Job:
    """Build and check everything against the data and the model; claim the resume target."""
    from hydra.utils import instantiate
    from timm.data import resolve_model_data_config

    from src.config import build, build_data
    from src.models.module import TransferModule, check_optimizer
    from src.models.tasks import task_for
    from src.preflight import check_input_size
    from src.tracking.resume import config_fingerprint, resume_point

    datamodule, regularisation, backbone = build_data(cfg)
    input_size = tuple(resolve_model_data_config(backbone)["input_size"])
    check_input_size(backbone, input_size, cfg.backbone.name)
    task = task_for(datamodule.classes, datamodule.multilabel, datamodule.loss_weights)
    task.check(regularisation, cfg.monitor.metric)
    strategy = build(cfg.strategy)
    strategy.check(cfg.trainer.max_epochs, regularisation)
    strategy.check_model(backbone)
    regularisation.bind(backbone, pretrained=cfg.backbone.pretrained)
    strategy.plan_prefix_cache(backbone, regularisation, datamodule, cfg.trainer.max_epochs)
    optimizer = check_optimizer(build(cfg.optimizer))
    log.info("Strategy: %s", type(strategy).__name__)
    module = TransferModule(
        model=backbone,
        strategy=strategy,
        optimizer=optimizer,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        regularisation=regularisation,
        class_names=datamodule.classes,
        task=task,
    )
    build_trainer(cfg, None, "", check_only=True)  # precision, accelerator, devices, strategy
    # Unresolved: ${paths.output_dir} differs per launch, the choices behind it do not.
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=False))
    point = None
    if cfg.get("resume"):
        point = resume_point(
            str(cfg.resume), cfg.paths.tracking_uri, cfg.experiment_name, fingerprint,
            flat_params(cfg),
        )  # fmt: skip
    return Job(cfg, choices, datamodule, strategy, module, point, fingerprint)


def build_trainer(cfg: DictConfig, point, fingerprint: str, check_only: bool = False):
    """(loggers, trainer). check_only: the Trainer's own argument checks, nothing opened."""
    from hydra.utils import instantiate

    from src.config import build
    from src.tracking.callbacks import SameConfigOnEveryRank
    from src.tracking.store import prepare_store

    if check_only:  # any failure to build a Trainer from these arguments is a config error
        try:
            build(cfg.trainer, logger=False, enable_checkpointing=False)
        except Exception as error:
            raise ValueError(f"trainer: {type(error).__name__}: {error}") from None
        return None
    mlflow_configs = [c for c in (cfg.get("logger") or {}).values() if "MLFlow" in c._target_]
    # Every process, DDP ranks included: an MLflow client migrates a fresh store as it is built,
    # so the schema must exist first (file-locked for sqlite). No run is created here.
    for c in mlflow_configs:
        prepare_store(c.tracking_uri, c.experiment_name, c.get("artifact_location"))
    loggers = [
        instantiate(c, **({"run_id": point.run_id} if point and c in mlflow_configs else {}))
        for c in (cfg.get("logger") or {}).values()
    ]
    built = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks = [c for c in built if c is not None]  # a factory may switch its callback off
    callbacks.append(SameConfigOnEveryRank(fingerprint))
    return loggers, instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The config as MLflow params: flattened with "/", secrets masked, values as text."""
    from lightning.fabric.utilities.logger import _flatten_dict

    from src.tracking.secrets import redact

    flat = _flatten_dict(redact(OmegaConf.to_container(cfg, resolve=True)))
    return {key: str(value) for key, value in flat.items()}


def finished_metrics(cfg: DictConfig, run_id: str) -> dict[str, float]:
    """The last values of a run another process completed while this one waited to resume it."""
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(cfg.paths.tracking_uri).get_run(run_id).data.metrics)


def report_outcome(metrics: dict[str, float], loggers, output_dir: Path) -> None:
    """The test scores, then the last line: the MLflow run id and the run's folder."""
    from src.tracking.loggers import mlflow_loggers
    from src.tracking.store import done_line

    for key in sorted(k for k in metrics if k.startswith("test/") and "_class/" not in k):
        log.info("%s = %.4f", key, metrics[key])
    mlflow = mlflow_loggers(loggers)
    run_id, uri = (mlflow[0].run_id, mlflow[0]._tracking_uri) if mlflow else (None, None)
    log.info(done_line(run_id, output_dir, uri))


def open_run(
    cfg: DictConfig, choices, loggers, point, fingerprint: str, datamodule, config_file: Path
):
    """Rank 0's MLflow run: params, tags, the resolved config, similarity scores; a resumed run
    shows RUNNING again and keeps the params it was started with (MLflow refuses to change them)."""
    from src.config import run_tags
    from src.similarity.tracking import attach_similarity, similarity_key
    from src.tracking.loggers import log_dataset, log_run_metadata, mlflow_loggers
    from src.tracking.resume import process_tags, reopen, retire_dead_runs
    from src.tracking.secrets import redact

    tags = {**run_tags(cfg, choices), **process_tags(config_file.parent, fingerprint)}
    tags["skipped_images"] = str(len(datamodule.source.skipped))
    params = {} if point else redact(OmegaConf.to_container(cfg, resolve=True))
    log_run_metadata(loggers, params, tags, config_file)
    for logger in mlflow_loggers(loggers):
        if point:
            reopen(logger, point)
        else:  # an earlier run of this config that died is not resumed: it ends KILLED
            retire_dead_runs(logger, fingerprint)
    if not point:  # a resumed run has its input already
        subset = {key: tags[key] for key in ("fraction", "samples_per_class")}
        source = OmegaConf.to_container(cfg.dataset.source, resolve=True)
        log_dataset(loggers, tags["dataset"], source, datamodule, subset)
    attach_similarity(loggers, similarity_key(cfg, choices))  # the scores measured before training
