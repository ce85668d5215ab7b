"""Weight averaging (conf/averaging: ema, swa) on Lightning's WeightAveraging callbacks.

Validation, every checkpoint (so the best one, which is tested and shipped to eval, predict and
export) and the end of training use the averaged weights; last.ckpt also holds the raw weights and
the averaging state, so a resumed run continues the average exactly. Both average every optimizer
step (torch's AveragedModel, buffers included), so a checkpoint never misses the last epoch.
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as L
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_avg_fn

log = logging.getLogger(__name__)
# In every checkpoint: whether its weights are the average (False: saved before averaging began).
AVERAGED_KEY = "weights_averaged"


def ema_decay(total_steps: int, half_life_fraction: float) -> float:
    """The EMA decay whose half-life is half_life_fraction of the run's optimizer steps.

    timm's 0.9998 has a half-life of ~3,500 steps: right for ImageNet-length runs, but on a small
    data set's few hundred steps the average would still be mostly the pretrained start. Tying the
    half-life to the run's length (default a tenth) leaves the start weighing 0.5^10 ~ 0.1 % at the
    end, whatever the data size."""
    half_life = max(1.0, half_life_fraction * total_steps)
    return 0.5 ** (1.0 / half_life)


def _total_steps(trainer: L.Trainer) -> int:
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps):
        raise ValueError(
            "averaging: the run has no step limit (trainer.max_epochs=-1, max_steps=-1), so the "
            "averaging schedule cannot be derived; set trainer.max_epochs or averaging.decay."
        )
    return int(steps)


class _Averaged:
    """What both averages change in Lightning's WeightAveraging (mixed in before it)."""

    def _averaged_yet(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        import warnings

        # TransferModule's configure_model only freezes parameters: nothing is sharded.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*overrides the configure_model")
            super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._averaged_yet():  # before its first update the average is the starting weights
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._averaged_yet():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # Stopped before the first update (SWA, early stopping): the run's weights stay.
        if self._averaged_yet():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[AVERAGED_KEY] = self._averaged_yet()  # read when the checkpoint is tested
        if self._averaged_yet():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning calls this also when trainer.test loads the best checkpoint, and would then
        # replace the averaged weights just loaded by the raw ones: only a resumed fit restores.
        # A checkpoint from before the first update (or the LR finder's) holds no average: the
        # average starts at its first update, as in a fresh run.
        if trainer.state.fn == TrainerFn.FITTING and "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        elif trainer.state.fn == TrainerFn.TESTING:
            self.said_what_ships(trainer, bool(checkpoint.get(AVERAGED_KEY, True)))

    def said_what_ships(self, trainer, averaged: bool) -> None:
        """The tested (and shipped) checkpoint is the best on validation: with SWA, or a run
        stopped early, it can predate the first update and hold the raw weights. Never silent:
        a warning and the run's tag averaging_shipped (average | raw)."""
        from src.tracking.loggers import mlflow_loggers

        self.shipped = "average" if averaged else "raw"
        if not averaged:
            log.warning(
                "Weight averaging: the best validation checkpoint predates the first averaged "
                "step, so the run tests and ships raw weights, not the average (an earlier "
                "averaging start, e.g. averaging.start_fraction, or more epochs would change it)"
            )
        for logger in mlflow_loggers(trainer.loggers):
            logger.experiment.set_tag(logger.run_id, "averaging_shipped", self.shipped)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._device is None:  # built in setup, before the model moved to its device
            self._average_model.to(pl_module.device)
        used = self.schedule(_total_steps(trainer))
        log.info("Weight averaging: %s", ", ".join(f"{k}={v}" for k, v in used.items()))
        # Next to the config's averaging/* params; the same values again on resume (MLflow accepts).
        for logger in trainer.loggers:
            logger.log_hyperparams({f"averaging/{key}": value for key, value in used.items()})

    def schedule(self, total_steps: int) -> dict:
        raise NotImplementedError


class EMA(_Averaged, EMAWeightAveraging):
    """Exponential moving average of the weights after every optimizer step.

    decay: fixed (e.g. timm's 0.9998 for long runs); null derives it from the run's length with
    a half-life of half_life_fraction of its optimizer steps (ema_decay)."""

    def __init__(self, decay: float | None = None, half_life_fraction: float = 0.1, **options):
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"averaging.decay={decay}: valid range (0, 1), or null (derived).")
        if not 0 < half_life_fraction <= 1:
            raise ValueError(
                f"averaging.half_life_fraction={half_life_fraction}: valid range (0, 1]."
            )
        super().__init__(decay=decay or 0.999, **options)
        self.decay, self.half_life_fraction = decay, half_life_fraction

    def schedule(self, total_steps: int) -> dict:
        decay = self.decay or ema_decay(total_steps, self.half_life_fraction)
        self._average_model.avg_fn = get_ema_avg_fn(decay)
        return {"decay_used": round(decay, 8), "total_steps": total_steps}


class SWA(_Averaged, WeightAveraging):
    """Stochastic weight averaging (Izmailov et al. 2018): the equal-weight average of the weights
    after every optimizer step from start_fraction of the run on, under the run's own LR schedule.

    Not Lightning's StochasticWeightAveraging: that one replaces the LR scheduler (every strategy's
    per-group factors would be lost), and validates and checkpoints the raw weights, so the best
    checkpoint, tested and shipped, would not be the average."""

    def __init__(self, start_fraction: float = 0.75, **options):
        if not 0 <= start_fraction < 1:
            raise ValueError(f"averaging.start_fraction={start_fraction}: valid range [0, 1).")
        super().__init__(**options)  # no avg_fn: AveragedModel's running equal-weight mean
        self.start_fraction, self.start_step = start_fraction, 0

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def schedule(self, total_steps: int) -> dict:
        self.start_step = int(self.start_fraction * total_steps)
        return {"start_step": self.start_step, "total_steps": total_steps}


def no_averaging() -> None:
    """averaging=none: no callback (the trainer drops a None)."""
    return None
