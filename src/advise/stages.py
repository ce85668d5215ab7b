"""The four stages of an advice in order, each told how far into the budget it may run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.advise import data as data_stage
from src.advise import search as search_stage
from src.advise.budget import Budget
from src.advise.jobs import as_job, backbone_overrides, command, fatal, minimal
from src.advise.rank import RankJob, rank
from src.advise.render import write
from src.advise.report import Advice, accuracy, kendall, projections
from src.sweeps.space import to_overrides

log = logging.getLogger(__name__)


class Stages:
    def __init__(
        self, cfg: DictConfig, budget: Budget, client, parent: str, key: str, where, data=()
    ):
        self.cfg, self.budget, self.client, self.parent, self.key = cfg, budget, client, parent, key
        self.where = list(where)  # experiment and paths overrides: not part of the command
        self.data_overrides = list(data)  # the user's dataset.* keys: part of every job
        self.out = Path(cfg.output_dir)
        self.cost = OmegaConf.to_container(cfg.search.cost)

    def run(self) -> Path:
        shares = self.cfg.shares
        ranking = self.rank(self.budget.deadline(shares.rank))
        kept = [row["backbone"] for row in ranking[: self.cfg.top_k]]
        log.info(
            "Ranking by %s: %s; kept %s",
            self.cfg.rank.score,
            [r["backbone"] for r in ranking],
            kept,
        )
        trials, measured = [], []
        for index, name in enumerate(kept):
            trials += self.search(name, index, len(kept), measured)
        best = search_stage.best_trial(trials, self.cost)
        data_rows, overrides = [], None
        if best is not None:
            overrides = self.train_overrides(best["backbone"], test=True) + to_overrides(
                {"strategy": best["strategy"], **best["params"]}
            )
            data_rows = self.data(best, overrides)
        return self.report(ranking, trials, best, overrides, data_rows)

    # --- 1. rank ------------------------------------------------------------------------------
    def rank(self, until: float) -> list[dict]:
        cfg = self.cfg
        job = RankJob(
            self.client,
            self.parent,
            self.key,
            cfg.dataset_name,
            cfg.experiment_name,
            [
                f"max_per_class={cfg.rank.max_per_class}",
                f"knn_k={cfg.rank.knn_k}",
                f"seed={cfg.seed}",
                *(o for o in self.where if o.startswith("paths.")),
                *self.data_overrides,
            ],
            self.out,
        )
        return rank(job, list(cfg.candidates), cfg.rank.score, cfg.top_k, self.budget, until)

    # --- 2. search ----------------------------------------------------------------------------
    def train_overrides(self, backbone: str, test: bool) -> list[str]:
        return job_overrides(self.cfg, backbone, test, self.data_overrides)

    def search(self, name: str, index: int, count: int, measured: list) -> list[dict]:
        """One backbone's study; its share of the search window, or of the trial quota."""
        budget, cfg = self.budget, self.cfg
        start, end = budget.elapsed(), budget.deadline(cfg.shares.search)
        until = start + (end - start) / (count - index) if math.isfinite(end) else end
        split = budget.trials_per_backbone(cfg.shares.search, count)
        n_trials = cfg.search.max_trials if split is None else split[index]
        if n_trials == 0:  # a run budget smaller than the kept backbones: said so, not overrun
            budget.skip(f"search {name}: no trial left in budget={cfg.budget}")
            return []
        job = search_stage.SearchJob(
            backbone=name,
            study_name=f"advise-{cfg.dataset_name}-{name}-{self.key}",
            overrides=[*self.train_overrides(name, test=False), *self.where],
            tags={"advise_key": self.key, "advise_stage": "search", "advise_backbone": name},
            output_dir=self.out / "search" / name,
            n_trials=n_trials,
            cost=self.cost,
            prior=list(measured),
        )
        mlflow = {
            "tracking_uri": cfg.paths.tracking_uri,
            "experiment_name": cfg.experiment_name,
            "artifact_location": cfg.paths.artifact_location,
        }
        sweeper = search_stage.make_sweeper(cfg, job, mlflow)
        trials = search_stage.run_study(sweeper, job, budget, until, self.parent, self.client)
        measured += search_stage.durations(trials, self.cost)
        return search_stage.trial_rows(name, trials)

    # --- 3. data ------------------------------------------------------------------------------
    def data(self, best: dict, overrides: list[str]) -> list[dict]:
        cfg, budget = self.cfg, self.budget
        job = data_stage.DataJob(
            self.client,
            self.parent,
            self.key,
            cfg.experiment_name,
            [*overrides, *self.where],
            self.out,
            best["seconds"] or 0.0,
        )
        units = data_stage.plan(list(cfg.data.fractions), list(cfg.data.seeds))
        quota = (
            None
            if budget.runs is None
            else max(0, budget.runs - budget.run_quota(cfg.shares.search))
        )
        return data_stage.run_fractions(job, units, budget, budget.deadline(cfg.shares.data), quota)

    # --- 4. report ----------------------------------------------------------------------------
    def report(self, ranking, trials, best, overrides, data_rows) -> Path:
        from src.advise.curve import fit

        points = [
            (r["train_images"], r["test_acc"]) for r in data_rows if r["test_acc"] is not None
        ]
        curve, note = None, ""
        try:
            curve = fit(*zip(*points, strict=True)) if points else None
            note = "" if points else "no data runs"
        except (ValueError, RuntimeError) as error:  # too few sizes, or the fit did not converge
            note = str(error)
        shipped = winner(best, data_rows)
        advice = Advice(
            dataset=self.cfg.dataset_name,
            budget=str(self.cfg.budget),
            parent_run=self.parent,
            ranking=ranking,
            trials=trials,
            best=best,
            command=self.command(overrides),
            winner=shipped,
            data=data_rows,
            curve=curve,
            curve_note=note,
            target_acc=self.cfg.target_acc,
            band=self.cfg.data.band,
            elapsed=self.budget.describe(),
            skipped=self.budget.skipped,
            trial_test_acc=None
            if shipped in {r["run_id"] for r in data_rows}
            else self.test(shipped),
        )
        files = write(advice, self.out)
        for path in files:
            self.client.log_artifact(self.parent, str(path))
        self.log_metrics(advice)
        log.info("Advice: %s", (self.out / "RESULTS.md").read_text().splitlines()[2])
        return self.out / "RESULTS.md"

    def test(self, run_id: str | None) -> float | None:
        """A shipped search trial (no run on all the data fitted the budget: trials are not
        tested) scored once on its test split by src.eval, into its run (metrics and per-image
        predictions), so the advice states what the model it ships does on test data."""
        from src.eval import evaluate_run

        if not run_id:
            return None
        paths = [o for o in self.where if o.startswith("paths.")]
        try:
            with as_job("eval", [f"run_id={run_id}", *paths], self.out / "tested") as (cfg, _):
                metrics = evaluate_run(cfg)
        except Exception as error:  # the report must not be lost to it
            if fatal(error):
                raise
            log.warning("Testing the shipped trial %s failed", run_id, exc_info=error)
            self.budget.skip(f"testing the shipped trial {run_id} ({type(error).__name__})")
            return None
        return next((v for k, v in metrics.items() if k.endswith("/acc")), None)

    def command(self, overrides: list[str] | None) -> str | None:
        """The shortest `python -m src.train` line that trains the winner: the choices and the
        values that differ from the defaults, nothing internal (progress bar, workers, paths)."""
        return command(minimal(overrides, self.where)) if overrides else None

    def log_metrics(self, advice: Advice) -> None:
        mean, std, seeds = accuracy(advice.data)
        values = {
            "advise/test_acc_mean": mean,
            "advise/test_acc_std": std,
            "advise/elapsed_min": self.budget.elapsed() / 60,
            "advise/skipped": len(advice.skipped),
            "advise/trial_test_acc": advice.trial_test_acc,
        }
        for row in projections(advice):
            values[f"advise/expected_acc_{row['data']}"] = row["expected_acc"]
        for row in kendall(advice.ranking, advice.trials):
            values[f"advise/kendall_tau_{row['score']}"] = row["kendall_tau"]
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.client.log_metric(self.parent, name, float(value))
        if advice.best:
            choice = f"{advice.best['backbone']}+{advice.best['strategy']}"
            self.client.set_tag(self.parent, "recommended", choice)
        if advice.winner:
            self.client.set_tag(self.parent, "winning_run", advice.winner)


def job_overrides(cfg: DictConfig, backbone: str, test: bool, data=()) -> list[str]:
    """What every training job of an advice shares (backbone, data set, epochs, metric, seed):
    a search trial adds its strategy and parameters, a data run its fraction and seed. The regret
    study (experiments/advisor_regret) trains its grid with the same, so its cells are the
    advisor's own configurations."""
    return [
        *backbone_overrides(backbone),
        f"dataset={cfg.dataset_name}",
        *cfg.train_overrides,
        *data,  # after train_overrides: the user's own keys win
        f"trainer.max_epochs={cfg.search.max_epochs}",
        f"monitor.metric={cfg.metric}",  # the checkpoint kept is the one trials are ranked by
        f"test={str(test).lower()}",
        f"seed={cfg.seed}",
    ]


def winner(best: dict | None, data_rows: list[dict]) -> str | None:
    """The run to use: the recommended configuration trained on all the data, the seed with the
    best validation accuracy (never the test accuracy: choosing on the test split would make the
    shipped model's test number, and the advisor's measured regret, optimistic), else the best
    search trial. Its checkpoint serves src.eval, predict and export."""
    full = [r for r in data_rows if r["fraction"] == 1.0 and r["test_acc"] is not None]
    if full:
        return max(full, key=lambda r: (r.get("val_acc") or 0.0, -r["seed"]))["run_id"]
    return (best or {}).get("run_id") or None
