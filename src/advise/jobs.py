"""Training and scoring jobs of the advisor, run in this process: conf/train.yaml (or
conf/similarity.yaml) composed with overrides (src.config.compose), then src.training's
`train(cfg, choices)` (or src.similarity's `measure(cfg, choices)`), exactly what
`python -m src.train <overrides>` would run."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, open_dict

from src.config import hydra_config_kept

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def backbone_overrides(name: str) -> list[str]:
    """A conf/backbone name as it is; any other name is a timm model on the _timm base."""
    if (CONF_DIR / "backbone" / f"{name}.yaml").is_file():
        return [f"backbone={name}"]
    return ["backbone=_timm", f"backbone.name={name}"]


def _composed(config_name: str, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """src.config.compose; an unknown data set or backbone config is bad input."""
    from hydra.errors import HydraException

    from src.config import compose as compose_job

    try:
        return compose_job(overrides, config_name)
    except HydraException as error:
        raise ValueError(str(error).splitlines()[0]) from None


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """A config of conf/ to check or build from; the advisor's HydraConfig stays its own."""
    with hydra_config_kept():
        return _composed(config_name, overrides)[0]


@contextmanager
def as_job(
    config_name: str, overrides: list[str], output_dir: Path
) -> Iterator[tuple[DictConfig, dict[str, str]]]:
    """(config, choices) of a job run in this process, writing into output_dir. HydraConfig is a
    process-wide singleton: while the job runs it holds the job's (run names read its choices);
    the advisor's own comes back afterwards."""
    with hydra_config_kept():
        cfg, choices = _composed(config_name, overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
        yield cfg, choices


def run_train(
    overrides: list[str], output_dir: Path, tags: dict[str, str]
) -> tuple[JobReturn, dict[str, float], float]:
    """(Hydra's JobReturn of train(cfg), its metrics, seconds): the JobReturn is what the sweeper's
    Worker reads a trial from. `tags` go on the run's MLflow logger (the advisor finds runs by them)."""
    from src.sweeps.sweeper import release_devices
    from src.training import train

    start = time.perf_counter()
    result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    metrics: dict[str, float] = {}
    with as_job("train", overrides, output_dir) as (cfg, choices):
        with open_dict(cfg):
            cfg.logger.mlflow.tags = dict(tags)
        try:
            metrics = train(cfg, choices)
            result.return_value = metrics.get(cfg.monitor.metric)
        except Exception as error:  # a failed or pruned trial is the Worker's to judge
            result.status, result.return_value = JobStatus.FAILED, error
        finally:
            release_devices()
    return result, metrics, time.perf_counter() - start


def command(overrides: list[str]) -> str:
    """The `python -m src.train ...` line that reruns a job (values quoted only where needed)."""
    plain = re.compile(r"^[\w.,\-\[\]/+=:]+$")

    def shell(item: str) -> str:
        key, _, value = item.partition("=")
        value = value.strip("'") if re.fullmatch(r"'[\w.\-]+'", value) else value
        text = f"{key}={value}"
        return text if plain.match(text) else f'"{text}"'

    return "python -m src.train " + " ".join(shell(o) for o in overrides)
