"""GridSweeper: a plain `python -m src.train -m seed=1,2,3 dataset.fraction=0.1,1.0` grid, as
Hydra's basic sweeper runs it, under one MLflow parent run (tag kind=grid) like an Optuna study's.

Each grid point's run is nested under the parent (tag mlflow.parentRunId, set at creation) and
named after the values it sweeps, so the UI tells grid points apart.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from src.sweeps.space import to_dict_override

log = logging.getLogger(__name__)
KIND = "grid"
# Config groups and keys the default run name already shows.
NAMED = {"strategy", "dataset", "backbone", "seed"}


class GridSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        mlflow: DictConfig | None = None,
    ):
        super().__init__(max_batch_size, params)
        plain = OmegaConf.to_container(mlflow, resolve=True) if mlflow is not None else None
        self.mlflow = plain if plain and plain.get("tracking_uri") else None
        self.swept: list[str] = []
        self.parent_run_id: str | None = None

    def sweep(self, arguments: list[str]) -> Any:
        parsed = OverridesParser.create().parse_overrides([*self._parse_config(), *arguments])
        self.swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
        if not self.mlflow:
            return super().sweep(arguments)
        from src.tracking.runs import mlflow_run

        swept = {
            o.get_key_element(): ",".join(o.sweep_string_iterator())
            for o in parsed
            if o.is_sweep_override()
        }
        name = "grid-" + "-".join(key.lstrip("+").rsplit(".", 1)[-1] for key in self.swept)
        tags = {"kind": KIND, "sweep": KIND}
        with mlflow_run(
            self.mlflow["tracking_uri"],
            self.mlflow["experiment_name"],
            self.mlflow.get("artifact_location"),
            name,
            tags,
            {"grid": swept},
        ) as (client, run_id):
            self.parent_run_id = run_id
            returns = super().sweep(arguments)
            client.log_metric(run_id, "grid/jobs", sum(len(batch) for batch in returns))
        log.info(
            "Grid finished: MLflow parent run %s; runs in %s", run_id, self.config.hydra.sweep.dir
        )
        return returns

    def get_job_batch(self):
        return [self.with_run(list(job)) for job in super().get_job_batch()]

    def with_run(self, overrides: list[str]) -> list[str]:
        """The job's overrides plus its run's parent and a name naming its swept values."""
        if not self.parent_run_id:
            return overrides
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        point = [
            f"{key.lstrip('+').rsplit('.', 1)[-1]}={values[key].strip(chr(39) + chr(34))}"
            for key in self.swept
            if key.lstrip("+") not in NAMED and key in values
        ]
        extra = [to_dict_override("logger.mlflow.tags", {"mlflow.parentRunId": self.parent_run_id})]
        if point:
            extra.append(f'logger.mlflow.run_name="${{run_name}}-{",".join(point)}"')
        return [*overrides, *extra]
