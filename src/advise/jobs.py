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

from src.config import hydra_config_kept, override_value

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def backbone_overrides(name: str) -> list[str]:
    """A conf/backbone name as it is; any other name is a timm model (conf/backbone/timm.yaml)."""
    if (CONF_DIR / "backbone" / f"{name}.yaml").is_file():
        return [f"backbone={name}"]
    return ["backbone=timm", f"backbone.name={name}"]


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


def fatal(error: BaseException) -> bool:
    """An error no other job of the advice would escape: refused input (a path, a key) or the
    tracking store failing (locked, full, an I/O error). The advice then fails, resumable, rather
    than count it as a trial's failure or a skipped data run and end FINISHED on what is left."""
    from src.cli import store_fault_line
    from src.errors import InvalidInput

    return isinstance(error, InvalidInput) or store_fault_line(error) is not None


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
            if fatal(error):
                raise
            result.status, result.return_value = JobStatus.FAILED, error
        finally:
            release_devices()
    return result, metrics, time.perf_counter() - start


def node_overrides(prefix: str, given, default) -> list[str]:
    """Overrides turning the `default` config node into `given` (both unresolved containers):
    the keys a user changed, added (+key) or removed (~key), at the deepest level that differs.
    How the advisor hands the user's whole dataset node (root, sizes, fractions ...) to its jobs."""
    if isinstance(given, dict) and isinstance(default, dict):
        overrides = []
        for key in given:
            if key not in default:
                overrides.append(f"+{prefix}.{key}={override_value(given[key])}")
            elif given[key] != default[key]:
                overrides += node_overrides(f"{prefix}.{key}", given[key], default[key])
        return overrides + [f"~{prefix}.{key}" for key in default if key not in given]
    return [f"{prefix}={override_value(given)}"]


def dataset_overrides(name: str, given: dict) -> list[str]:
    """The user's changes to data set `name` (dataset.source.root=..., dataset.fraction=...;
    `given`: the user's dataset node, unresolved), as overrides every job composes after
    `dataset=<name>`."""
    from omegaconf import OmegaConf

    default = OmegaConf.to_container(compose("train", [f"dataset={name}"]).dataset, resolve=False)
    return node_overrides("dataset", given, default)


# How a job runs, not what it trains: left out of a reproduce command.
INTERNAL = (
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "logger.",
    "dataset.num_workers",
    "paths.",
    "experiment_name",
    "study",
    "hydra.",
    "kind",
)


def minimal(overrides: list[str], internal: list[str] = ()) -> list[str]:
    """The overrides that matter for a rerun: not the `internal` ones nor any INTERNAL key
    (progress bars, logging, workers, paths), and no `key=value` whose value is already
    conf/train.yaml's under the same choices."""
    from omegaconf import OmegaConf

    kept = [
        o
        for o in overrides
        if o not in internal and not o.split("=", 1)[0].lstrip("+~").startswith(INTERNAL)
    ]
    choices = [o for o in kept if "." not in o.split("=", 1)[0]]
    full, base = compose("train", kept), compose("train", [o for o in choices if _is_group(o)])

    def changes(item: str) -> bool:
        key = item.split("=", 1)[0].lstrip("+~")
        if _is_group(item):
            return True  # a choice of backbone, data set, strategy is the point of the command
        return OmegaConf.select(full, key, throw_on_missing=False) != OmegaConf.select(
            base, key, throw_on_missing=False
        )

    return [o for o in kept if changes(o)]


def _is_group(item: str) -> bool:
    key = item.split("=", 1)[0].lstrip("+~")
    return "." not in key and (CONF_DIR / key).is_dir()


def command(overrides: list[str]) -> str:
    """The `python -m src.train ...` line that reruns a job (values quoted only where needed)."""
    plain = re.compile(r"^[\w.,\-\[\]/+=:]+$")

    def shell(item: str) -> str:
        key, _, value = item.partition("=")
        value = value.strip("'") if re.fullmatch(r"'[\w.\-]+'", value) else value
        text = f"{key}={value}"
        return text if plain.match(text) else f'"{text}"'

    return "python -m src.train " + " ".join(shell(o) for o in overrides)
