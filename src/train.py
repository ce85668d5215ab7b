"""Main job: `python -m src.train backbone=resnet50 strategy=finetune`.

The entry point only: src.cli composes the config and answers errors, signals and exit codes;
src.training runs the job (build and validate everything, open the MLflow run, fit, test on the
best checkpoint). Nothing imports this module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from src.cli import entry_point

log = logging.getLogger(__name__)
# Made atomically (O_EXCL) by the fresh run that owns a folder: a second run never shares it.
OWNER_FILE = ".run_owner"


@entry_point("train")  # its tracking URIs are checked with the rest of the config (preflight)
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from src.training import train

    if cfg.get("resume") is None:  # a resumed run writes on in the folder it recorded
        own_folder(cfg)
    metrics = train(cfg, HydraConfig.get().runtime.choices)
    return metrics.get(cfg.monitor.metric)  # train() logged the scores and the run: last line


def own_folder(cfg: DictConfig) -> None:
    """Two fresh runs given one hydra.run.dir (or started in the same second) would share its
    checkpoints and config.yaml, and eval would score one's model for the other: the second
    writes into a numbered sub-folder of its own instead, and says so."""
    folder = Path(cfg.paths.output_dir)
    for attempt in range(1, 1000):
        candidate = folder if attempt == 1 else folder / f"run{attempt}"
        candidate.mkdir(parents=True, exist_ok=True)
        used = (candidate / "config.yaml").exists() or (candidate / "checkpoints").exists()
        try:
            if used:
                raise FileExistsError
            os.close(os.open(candidate / OWNER_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        if candidate != folder:
            log.warning("%s holds another run: this run writes into %s", folder, candidate)
            with open_dict(cfg):
                cfg.paths.output_dir = str(candidate)
        return
    raise RuntimeError(f"{folder}: 999 runs already; give another hydra.run.dir.")


if __name__ == "__main__":
    main()
