"""Main job: `python -m src.train backbone=resnet50 strategy=finetune`.

The entry point only: src.cli composes the config and answers errors, signals and exit codes;
src.training runs the job (build and validate everything, open the MLflow run, fit, test on the
best checkpoint). Nothing imports this module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from src.cli import entry_point

log = logging.getLogger(__name__)


@entry_point("train")  # its tracking URIs are checked with the rest of the config (preflight)
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from src.training import train

    if cfg.get("resume") is None and os.environ.get("LOCAL_RANK", "0") == "0":
        own_run_folder(cfg)  # a resumed run writes on in the folder it recorded; DDP ranks > 0
        # write nothing of their own
    metrics = train(cfg, HydraConfig.get().runtime.choices)
    return metrics.get(cfg.monitor.metric)  # train() logged the scores and the run: last line


def own_run_folder(cfg: DictConfig) -> None:
    """A fresh run's folder is its own (src.tracking.claim.own_folder). Hydra's runtime folder
    is moved, not the key, so the run's unresolved config (its fingerprint, which resume=auto
    matches) stays that of the command; an output_dir given by hand cannot move: refused."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    from src.errors import InvalidInput
    from src.tracking.claim import own_folder

    given = Path(cfg.paths.output_dir)
    by_hydra = OmegaConf.to_container(cfg.paths, resolve=False)["output_dir"] == HYDRA_OUTPUT_DIR
    folder = own_folder(given, sub_folders=by_hydra)
    if folder is None:
        raise InvalidInput(
            f"paths.output_dir='{given}' holds another run's files; give a new folder, or "
            "resume=auto to continue that run."
        )
    if folder == given:
        return
    runtime = HydraConfig.instance().cfg.hydra.runtime  # read-only: Hydra's, moved on purpose
    with read_write(runtime), open_dict(runtime):
        runtime.output_dir = str(folder)
    log.warning("%s holds another run: this run writes into %s", given, folder)


HYDRA_OUTPUT_DIR = "${hydra:runtime.output_dir}"


if __name__ == "__main__":
    main()
