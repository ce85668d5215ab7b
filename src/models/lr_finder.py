"""`lr_find=true|use`: Lightning's LR range test (Smith 2017) on the composed job, before it trains.

The test runs num_training_steps optimizer steps on the job's own model, data and optimizer with
the lr rising from min_lr to max_lr, then restores everything (weights, optimizer, RNG) as it was.
Its suggestion (the steepest loss descent) and its plot go to the MLflow run; with `use` the run
trains at the suggestion: optimizer.lr, the head's rate, which the strategy scales per group as
usual. Lightning's test moves every group's lr together, so per-group scales do not shape the curve.
A resumed run skips it: its optimizer, lr included, comes back from the checkpoint.
"""

from __future__ import annotations

import functools
import logging

from lightning.pytorch.callbacks import LearningRateFinder

log = logging.getLogger(__name__)


def lr_finder(mode: bool | str = False, **options) -> LRFinder | None:
    """callbacks.lr_finder: None (off) unless lr_find is true (log only) or use (also train at it)."""
    if not (mode is True or mode is False or mode == "use"):  # not 0/1, which equal the bools
        raise ValueError(f"lr_find={mode!r}: choose false, true (log the suggestion) or use.")
    return LRFinder(use=mode == "use", **options) if mode else None


class LRFinder(LearningRateFinder):
    def __init__(
        self,
        use: bool = False,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
    ):
        if not 0 < min_lr < max_lr:
            raise ValueError(f"lr_finder: min_lr={min_lr}, max_lr={max_lr}: 0 < min_lr < max_lr.")
        if num_training_steps < 2:
            raise ValueError(f"lr_finder.num_training_steps={num_training_steps}: must be >= 2.")
        super().__init__(
            min_lr, max_lr, num_training_steps, mode, early_stop_threshold, update_attr=False
        )
        self.use = use
        self.suggestion: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path:
            log.info("LR finder: skipped on resume (the optimizer's lr is the checkpoint's)")
            return
        loop = trainer.fit_loop
        max_epochs, loop.max_epochs = loop.max_epochs, loop.max_epochs + self._num_training_steps
        try:  # the range test's steps may outnumber the run's; they stop at its max_steps
            self.lr_find(trainer, pl_module)
        finally:
            loop.max_epochs = max_epochs
        if self.optimal_lr is None:  # fast_dev_run: Lightning skips the test
            return
        self.suggestion = self.optimal_lr.suggestion()
        if self.suggestion is None:
            log.warning(
                "LR finder: no suggestion (too few steps, or no descent); the configured lr is kept"
            )
        used = self.use and self.suggestion is not None
        if used:
            factory = pl_module.optimizer_factory
            pl_module.optimizer_factory = functools.partial(
                factory.func, *factory.args, **{**factory.keywords, "lr": self.suggestion}
            )
            trainer.strategy.setup_optimizers(trainer)  # the LR schedule starts from it too
        log.info(
            "LR finder: suggestion %s over %d steps; %s",
            self.suggestion,
            len(self.optimal_lr.results["lr"]),
            "training at it" if used else "not used",
        )
        self._log(trainer, used)

    def _log(self, trainer, used: bool) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from src.tracking.loggers import mlflow_loggers

        params = {"lr_find/suggestion": self.suggestion, "lr_find/used": used}
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
        mlflow = mlflow_loggers(trainer.loggers)
        if not mlflow or not trainer.is_global_zero:
            return
        figure = self.optimal_lr.plot(suggest=self.suggestion is not None)
        figure.axes[0].set_title(f"LR range test: suggestion {self.suggestion}")
        for logger in mlflow:
            logger.experiment.log_figure(logger.run_id, figure, "lr_find.png")
        plt.close(figure)
