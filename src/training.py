"""One training job, read top to bottom: `train(cfg, choices)` runs its phases in order.

0. compose   Hydra, at the entry point (src/train.py), or src.config.compose for the advisor,
             the bench and the tests
1. check     the config alone (src/preflight.check_config)
2. build     data, backbone, regularisation, task, strategy, its pipeline: once each (build_parts)
3. check     the built parts against each other: every refusal that needs them (check_parts);
             the resume target is claimed last (claim_resume_target). Nothing is opened before.
4. build     the module and the trainer with its callbacks (build_module, build_trainer)
5. open      the store, the loggers, the run's folder, config file and MLflow run (open_run)
6. fit       the strategy's pipeline fits (src/pipelines): a strategy never calls trainer.fit
7. test      on the best checkpoint
8. ship      the MLflow run FINISHED, the test scores and the last line (ship)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
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
    with sigterm_raises() as sigterm:
        with refuse_bad_input():
            check_config(cfg)  # 1
            L.seed_everything(cfg.seed, workers=True)
            parts = build_parts(cfg)  # 2
            check_parts(cfg, parts)  # 3
            claim = claim_resume_target(cfg, parts.fingerprint)
        try:
            resumed = claim.resumed
            if resumed is not None and resumed.checkpoint is None:
                # completed by the process we waited for
                return finished_metrics(cfg, resumed.run_id)
            with refuse_bad_input():
                module = build_module(cfg, parts)  # 4
                trainer = build_trainer(cfg, parts.fingerprint, parts.regularisation)
            return open_fit_test_ship(cfg, choices, parts, module, trainer, claim, sigterm)  # 5-8
        finally:
            claim.release()


@dataclass
class Parts:
    """What a job is built from, each built once; `fingerprint`: the config's identity (resume)."""

    datamodule: object
    regularisation: object
    backbone: object
    task: object
    strategy: object
    pipeline: object
    optimizer: object
    fingerprint: str


def build_parts(cfg: DictConfig) -> Parts:
    """2. The data ready and preprocessed as the backbone wants, the strategy and its pipeline."""
    from src.config import build_data, instantiate_node
    from src.models.tasks import task_for
    from src.pipelines import pipeline_for
    from src.tracking.resume import config_fingerprint

    datamodule, regularisation, backbone = build_data(cfg)
    task = task_for(datamodule.classes, datamodule.multilabel, datamodule.loss_weights)
    strategy = instantiate_node(cfg.strategy)
    log.info("Strategy: %s", type(strategy).__name__)
    # Unresolved: ${paths.output_dir} differs per launch, the choices behind it do not.
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=False))
    # its weight decay: the preset's
    optimizer = regularisation.optimizer(instantiate_node(cfg.optimizer))
    return Parts(
        datamodule,
        regularisation,
        backbone,
        task,
        strategy,
        pipeline_for(strategy),
        optimizer,
        fingerprint,
    )


def check_parts(cfg: DictConfig, parts: Parts) -> None:
    """3. Every refusal that needs the built data and model, in one place."""
    from timm.data import resolve_model_data_config

    from src.models.module import check_optimizer
    from src.preflight import check_input_size

    backbone, regularisation, strategy = parts.backbone, parts.regularisation, parts.strategy
    input_size = tuple(resolve_model_data_config(backbone)["input_size"])
    check_input_size(backbone, input_size, cfg.backbone.name)
    parts.task.check(regularisation, cfg.monitor.metric)
    strategy.check(cfg.trainer.max_epochs, regularisation)
    strategy.check_model(backbone)
    regularisation.bind(backbone, pretrained=cfg.backbone.pretrained)  # L2-SP's w0, or a refusal
    parts.pipeline.plan(backbone, regularisation, parts.datamodule, cfg.trainer.max_epochs)
    check_optimizer(parts.optimizer)


class Claim:
    """The resume target, `resumed` (a ResumePoint; None: a fresh run), and the lock of the folder
    this process writes in."""

    def __init__(self, resumed):
        self.resumed, self.lock = resumed, resumed.lock if resumed else None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def claim_resume_target(cfg: DictConfig, fingerprint: str) -> Claim:
    """The last refusal: resume=auto|<run id> finds (and locks) the run to continue; from here
    on the job writes in that run's folder."""
    from src.tracking.resume import resume_point

    resumed = None
    if cfg.get("resume"):
        resumed = resume_point(
            str(cfg.resume),
            cfg.paths.tracking_uri,
            cfg.experiment_name,
            fingerprint,
            flat_params(cfg),
        )
    if resumed is not None and resumed.checkpoint is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(resumed.output_dir)
    return Claim(resumed)


def build_module(cfg: DictConfig, parts: Parts):
    """4. The LightningModule: the backbone, the strategy's groups, optimizer and schedule."""
    from hydra.utils import instantiate

    from src.models.module import TransferModule

    return TransferModule(
        model=parts.backbone,
        strategy=parts.strategy,
        optimizer=parts.optimizer,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        regularisation=parts.regularisation,
        class_names=parts.datamodule.classes,
        task=parts.task,
    )


def build_trainer(cfg: DictConfig, fingerprint: str, regularisation):
    """4. The Trainer and its callbacks, no logger yet (phase 5 attaches them): the Trainer's own
    argument checks (precision, accelerator, devices, strategy) refuse bad values here."""
    from lightning.pytorch.callbacks import ProgressBar

    from src.config import instantiate_node
    from src.tracking.callbacks import SameConfigOnEveryRank

    built = [
        instantiate_node(c) for c in (cfg.get("callbacks") or {}).values()
    ]  # a bad value: its own error
    # Each group's own callback: averaging=none|ema|swa, the preset's early stopping.
    built.append(instantiate_node(cfg.averaging) if cfg.get("averaging") else None)
    built.append(regularisation.early_stopper(cfg.monitor.metric, cfg.monitor.mode))
    callbacks = [c for c in built if c is not None]  # a factory may switch its callback off
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks.append(SameConfigOnEveryRank(fingerprint))
    try:
        return instantiate_node(cfg.trainer, callbacks=callbacks, logger=False)
    except Exception as error:  # any failure to build a Trainer from these arguments
        raise ValueError(f"trainer: {type(error).__name__}: {error}") from None


def open_fit_test_ship(
    cfg, choices, parts: Parts, module, trainer, claim: Claim, sigterm
) -> dict[str, float]:
    """5-8. Under DDP only global rank 0 writes (config, MLflow run, checkpoints); the other ranks'
    MLflow loggers are no-ops (rank_zero_experiment). A resumed job writes on in its old folder
    and run."""
    from src.tracking.loggers import finish_at_the_end, record_failure
    from src.tracking.resume import shared_with_ranks

    resumed = claim.resumed
    trainer.loggers = build_loggers(cfg, resumed)
    finish = finish_at_the_end(trainer.loggers)
    output_dir, config_file = open_folder(cfg, trainer, claim)  # 5
    try:
        if trainer.is_global_zero:
            open_run(cfg, choices, parts, trainer.loggers, resumed, config_file)
        checkpoint = resumed and str(resumed.checkpoint)
        with shared_with_ranks(resumed):
            parts.pipeline.fit(trainer, module, parts.datamodule, ckpt_path=checkpoint)  # 6
        sigterm.check()
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        metrics.update(best_monitored(trainer, cfg.monitor.metric))
        if cfg.get("test"):
            metrics.update(parts.pipeline.test(trainer, module, parts.datamodule))  # 7
            sigterm.check()
        if trainer.is_global_zero:
            finish()
    except BaseException as error:
        record_failure(trainer.loggers, error)
        raise
    if trainer.is_global_zero:
        ship(metrics, trainer.loggers, output_dir)  # 8
    return metrics


def build_loggers(cfg: DictConfig, resumed) -> list:
    """The configured loggers; an MLflow logger continues the resumed run (resumed.run_id)."""
    from hydra.utils import instantiate

    from src.tracking.store import prepare_store

    mlflow_configs = [c for c in (cfg.get("logger") or {}).values() if "MLFlow" in c._target_]
    # Every process, DDP ranks included: an MLflow client migrates a fresh store as it is built,
    # so the schema must exist first (file-locked for sqlite). No run is created here.
    for c in mlflow_configs:
        prepare_store(c.tracking_uri, c.experiment_name, c.get("artifact_location"))
    return [
        instantiate(c, **({"run_id": resumed.run_id} if resumed and c in mlflow_configs else {}))
        for c in (cfg.get("logger") or {}).values()
    ]


def best_monitored(trainer, metric: str) -> dict[str, float]:
    """The monitored metric of the checkpoint the run keeps (tested, exported), not of the last
    epoch: what a sweep's objective and the advisor's ranking must describe."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.monitor != metric or callback.best_model_score is None:
        return {}
    return {metric: float(callback.best_model_score)}


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The config as MLflow params: flattened with "/", secrets masked, values as text."""
    from src.tracking.loggers import flatten_params
    from src.tracking.secrets import redact

    flat = flatten_params(redact(OmegaConf.to_container(cfg, resolve=True)))
    return {key: str(value) for key, value in flat.items()}


def finished_metrics(cfg: DictConfig, run_id: str) -> dict[str, float]:
    """The last values of a run another process completed while this one waited to resume it."""
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(cfg.paths.tracking_uri).get_run(run_id).data.metrics)


def ship(metrics: dict[str, float], loggers, output_dir: Path) -> None:
    """8. The test scores, then the last line: the MLflow run id and the run's folder."""
    from src.tracking.loggers import mlflow_loggers
    from src.tracking.store import done_line

    for key in sorted(k for k in metrics if k.startswith("test/") and "_class/" not in k):
        log.info("%s = %.4f", key, metrics[key])
    mlflow = mlflow_loggers(loggers)
    # _tracking_uri: the URI this logger was given; MLFlowLogger keeps it in no public attribute.
    run_id, uri = (mlflow[0].run_id, mlflow[0]._tracking_uri) if mlflow else (None, None)
    log.info(done_line(run_id, output_dir, uri))


def open_folder(cfg: DictConfig, trainer, claim: Claim) -> tuple[Path, Path]:
    """5. (output folder, its config.yaml): the folder locked by this process (a fresh run; a
    resumed one holds its lock from the claim), the resolved config written by rank 0."""
    from src.tracking.claim import RunLock
    from src.tracking.secrets import redact

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if claim.lock is None and trainer.is_global_zero:  # a fresh run: this process owns it
        claim.lock = RunLock(output_dir)
        if not claim.lock.acquire():
            raise RuntimeError(f"{output_dir} is in use by another training process.")
    config_file = output_dir / "config.yaml"
    if trainer.is_global_zero:
        # A password in a URL (a sweep's storage) is masked here as in the logged params.
        config_file.write_text(redact(OmegaConf.to_yaml(cfg, resolve=True)))
    return output_dir, config_file


def open_run(cfg: DictConfig, choices, parts: Parts, loggers, resumed, config_file: Path) -> None:
    """5. Rank 0's MLflow run: params, tags, the data set, similarity scores when asked
    (attach_similarity); a resumed run shows RUNNING again and keeps the params it was started
    with (MLflow refuses to change them)."""
    from src.config import run_tags
    from src.similarity.tracking import attach_similarity, similarity_key
    from src.tracking.loggers import log_dataset, log_run_metadata, mlflow_loggers
    from src.tracking.resume import process_tags, reopen, retire_dead_runs
    from src.tracking.secrets import redact

    tags = {**run_tags(cfg, choices), **process_tags(config_file.parent, parts.fingerprint)}
    tags["skipped_images"] = str(len(parts.datamodule.source.skipped))
    # The split sizes: a study counts the training images a run processed (machine-independent
    # compute: train_images x epochs), and a reader sees what a number was measured on.
    for split in ("train", "val", "test"):
        tags[f"{split}_images"] = str(len(getattr(parts.datamodule.splits, split)))
    params = {} if resumed else redact(OmegaConf.to_container(cfg, resolve=True))
    log_run_metadata(loggers, params, tags, config_file)
    for logger in mlflow_loggers(loggers):
        if resumed:
            reopen(logger, resumed)
        else:  # an earlier run of this config that died is not resumed: it ends KILLED
            retire_dead_runs(logger, parts.fingerprint)
    if not resumed:  # a resumed run has its input already
        subset = {key: tags[key] for key in ("fraction", "samples_per_class")}
        source = OmegaConf.to_container(cfg.dataset.source, resolve=True)
        log_dataset(loggers, tags["dataset"], source, parts.datamodule, subset)
    if not resumed:  # a strategy's own counts (LoRA, BitFit: the parameters that train)
        counts = parts.strategy.trained_parameters(parts.backbone)
        for logger in loggers if counts else ():
            logger.log_hyperparams(counts)
    if cfg.get("attach_similarity"):  # opt-in: the scores measured before training
        attach_similarity(loggers, similarity_key(cfg, choices))
