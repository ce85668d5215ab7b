"""Search spaces declared in YAML -> Optuna suggestions -> Hydra overrides.

One entry per config key (or config group, e.g. `strategy`):

    optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    strategy.freeze_stages: {type: int, low: 1, high: 4, when: {strategy: [partial]}}
    regularisation.augmentation: {type: categorical, choices: [basic, randaugment]}

`when` makes a knob conditional on an earlier choice: it is suggested only in trials that picked
one of the listed values, so a key that exists only in one strategy's config is never set in
another's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from src.config import override_value

KINDS = ("float", "int", "categorical")


class SearchSpace:
    def __init__(self, params: Mapping[str, Mapping[str, Any]]):
        if not params:
            raise ValueError("hydra.sweeper.params is empty: declare at least one parameter.")
        self.params = {name: dict(spec) for name, spec in params.items()}
        for name, spec in self.params.items():
            self._check(name, spec)

    def _check(self, name: str, spec: dict[str, Any]) -> None:
        kind = spec.get("type")
        if kind not in KINDS:
            raise ValueError(f"hydra.sweeper.params.{name}.type={kind!r}: choose one of {KINDS}.")
        if kind == "categorical" and not spec.get("choices"):
            raise ValueError(f"hydra.sweeper.params.{name}: categorical needs `choices`.")
        if kind != "categorical" and not spec.get("low", math.inf) <= spec.get("high", -math.inf):
            raise ValueError(f"hydra.sweeper.params.{name}: needs low <= high, got {spec}.")
        for earlier, values in (spec.get("when") or {}).items():
            if earlier not in self.params or list(self.params).index(earlier) >= list(
                self.params
            ).index(name):
                raise ValueError(
                    f"hydra.sweeper.params.{name}.when names {earlier!r}: it must be a parameter "
                    "declared above this one."
                )
            if not isinstance(values, list | tuple):
                spec["when"][earlier] = [values]

    def unconditional(self) -> list[str]:
        return [name for name, spec in self.params.items() if not spec.get("when")]

    def suggest(self, trial) -> dict[str, Any]:
        """Suggest every active parameter on an Optuna trial, in declaration order."""
        chosen: dict[str, Any] = {}
        for name, spec in self.params.items():
            when = spec.get("when") or {}
            if all(chosen.get(key) in values for key, values in when.items()):
                chosen[name] = self._suggest_one(trial, name, spec)
        return chosen

    @staticmethod
    def _suggest_one(trial, name: str, spec: dict[str, Any]) -> Any:
        if spec["type"] == "categorical":
            return trial.suggest_categorical(name, list(spec["choices"]))
        suggest = trial.suggest_float if spec["type"] == "float" else trial.suggest_int
        kwargs = {"log": bool(spec.get("log", False))}
        if spec.get("step") is not None:
            kwargs["step"] = spec["step"]
        return suggest(name, spec["low"], spec["high"], **kwargs)

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for Optuna's GridSampler (needs choices or a step)."""
        grid = {}
        for name, spec in self.params.items():
            if spec.get("when"):
                raise ValueError(f"hydra.sweeper.params.{name}: grid search has no conditionals.")
            if spec["type"] == "categorical":
                grid[name] = list(spec["choices"])
            elif spec["type"] == "int":
                grid[name] = list(range(spec["low"], spec["high"] + 1, spec.get("step") or 1))
            elif spec.get("step"):
                count = round((spec["high"] - spec["low"]) / spec["step"]) + 1
                grid[name] = [spec["low"] + i * spec["step"] for i in range(count)]
            else:
                raise ValueError(
                    f"hydra.sweeper.params.{name}: a grid needs `choices` or a `step` for floats."
                )
        return grid


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """Hydra command-line overrides for a trial's parameters (strings quoted, floats exact)."""
    return [f"{name}={override_value(value)}" for name, value in params.items()]


def to_dict_override(key: str, values: Mapping[str, Any]) -> str:
    """`++key={a:1,b:'x'}`: adds (or replaces) a whole node in the job's config."""
    return f"++{key}={override_value(values)}"
