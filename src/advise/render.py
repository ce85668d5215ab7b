"""Stage 4 on disk: RESULTS.md (the headline, then the evidence of each stage with its MLflow runs)
and write(), every file of the report (tables, advice.json, the plot, RESULTS.md last)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from src.advise.report import (
    Advice,
    accuracy,
    cell,
    curve_label,
    kendall,
    percent,
    plot,
    projections,
    summary,
    table,
)
from src.tracking.tables import write_table


def headline(advice: Advice) -> str:
    if advice.best is None:
        return "No recommendation: no search trial completed within the budget."
    mean, std, seeds = accuracy(advice.data)
    best = advice.best
    params = ", ".join(f"{k}={_short(v)}" for k, v in best["params"].items())
    spread = f" ± {100 * std:.2f}" if math.isfinite(std) else ""
    if seeds:
        acc = f"test accuracy {100 * mean:.2f}{spread}% (mean ± std over {seeds} seed{'s' * (seeds > 1)})"
    elif advice.trial_test_acc is not None:
        acc = (
            f"test accuracy {percent(advice.trial_test_acc)} (its search trial, shipped: no "
            "data run on all the data fitted the budget)"
        )
    else:
        acc = f"val accuracy {percent(best['val_acc'])} (no full-data test run fitted the budget)"
    return f"**Recommendation: {best['backbone']} + {best['strategy']}** ({params}): {acc}."


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def data_section(advice: Advice) -> list[str]:
    lines = ["## 3. How much data", ""]
    if not advice.data:
        return [*lines, "No data-fraction run fitted the budget.", ""]
    lines += [table(advice.data), ""]
    if advice.curve is None:
        return [*lines, f"No learning curve: {advice.curve_note}", ""]
    curve, err = advice.curve, advice.curve.stderr()
    lines += [
        f"Fit: {curve_label(curve)} over {curve.n_points} runs; a = {curve.a:.4f} ± {err[0]:.4f}, "
        f"b = {curve.b:.4g} ± {err[1]:.3g}, c = {curve.c:.3f} ± {err[2]:.3f} (std errors from the "
        f"fit's covariance). Band: central {advice.band:.0%} of the curve over parameter draws.",
        "",
        table(
            [
                {
                    **r,
                    "expected_acc": percent(r["expected_acc"]),
                    "low": percent(r["low"]),
                    "high": percent(r["high"]),
                }
                for r in projections(advice)
            ]
        ),
    ]
    if advice.target_acc is not None:
        n, low, high = curve.images_for(advice.target_acc, advice.band)
        reach = (
            f"about {n:,.0f} training images (band {low:,.0f} – {high:,.0f})"
            if math.isfinite(n)
            else f"not reachable: the curve levels off at {percent(curve.a)}"
        )
        lines += [f"Target {percent(advice.target_acc)}: {reach}.", ""]
    return [*lines, "![data efficiency](data_efficiency.png)", ""]


def use_section(advice: Advice) -> list[str]:
    """The winning run id with the commands that use it at once, and the shortest command that
    trains it again."""
    if not advice.command:
        return ["(no winner)"]
    lines = []
    if advice.winner:
        run = advice.winner
        lines += [
            f"Winning run: `{run}`",
            "",
            "```",
            f"python -m src.predict run_id={run} images=<file or folder>",
            f"python -m src.export run_id={run} formats=[torchscript,onnx]",
            f"python -m src.eval run_id={run}",
            "```",
            "",
        ]
    return [*lines, "Train it again:", "", f"```\n{advice.command}\n```"]


# The regret study's table (experiments/advisor_regret/results.py): what trusting the advice costs.
REGRET_TABLE = Path(__file__).resolve().parents[2] / "experiments" / "advisor_regret" / "regret.csv"


def regret_line(table: Path = REGRET_TABLE) -> str:
    """The advisor's measured regret (oracle of an exhaustive grid - the shipped model, in
    test-accuracy points), at each fraction of the grid's compute, and the targets it was
    measured on; or that it has not been measured."""
    import csv

    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    mean = [r for r in rows if r["target"] == "mean" and r["method"] == "advisor"]
    if not mean:
        return (
            "Expected regret: not measured yet (`bash experiments/advisor_regret/run.sh` measures "
            "it against an exhaustive grid)."
        )
    targets = sorted({r["target"] for r in rows if r["target"] != "mean"})
    parts = [
        f"{float(r['regret_points']):.1f} [{float(r['low']):.1f}, {float(r['high']):.1f}] points "
        f"at {100 * float(r['compute_fraction']):.0f} %"
        for r in sorted(mean, key=lambda r: float(r["compute_fraction"]))
    ]
    return (
        f"Expected regret (test accuracy of an exhaustive grid's best model minus the advisor's, "
        f"95 % interval, at a fraction of the grid's compute; measured on {', '.join(targets)}: "
        f"experiments/advisor_regret/RESULTS.md): {'; '.join(parts)}."
    )


def results_markdown(advice: Advice, taus: list[dict]) -> str:
    lines = [
        f"# Advice for `{advice.dataset}`",
        "",
        headline(advice),
        "",
        f"Budget {advice.budget}: used {advice.elapsed}. MLflow parent run `{advice.parent_run}`"
        " (tag kind=advise); every run below is nested under it.",
        "",
        regret_line(),
        "",
        "## Use the winning run, or reproduce it",
        "",
        *use_section(advice),
        "",
        "## 1. Ranking before training (transferability on a subsample)",
        "",
        table(advice.ranking) if advice.ranking else "(no candidate scored)",
        "",
        "Agreement of each score's order with the best val accuracy each backbone reached in the "
        "search (Kendall τ over the `backbones` the search trained: with k of them one swapped "
        "pair moves τ by 4/(k(k-1)), so with 2 it is +1 or -1 and with 4 it moves by 0.33; nan "
        "where fewer than 2 were trained or all reached the same accuracy; `top_k=` trains more "
        "candidates):",
        "",
        table(taus) if taus else "(fewer than 2 trained backbones)",
        "",
        "## 2. Search (Optuna, pruned; val accuracy)",
        "",
        table(sorted(advice.trials, key=lambda r: -(r["val_acc"] or 0)))
        if advice.trials
        else "(no trial)",
        "",
        *data_section(advice),
        "## Skipped for the budget",
        "",
        *([f"- {item}" for item in advice.skipped] or ["Nothing."]),
        "",
    ]
    return "\n".join(lines)


def write(advice: Advice, out: Path) -> list[Path]:
    """Every file of the report; RESULTS.md last, so it can name the others."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for stem, rows in (
        ("ranking", advice.ranking),
        ("trials", advice.trials),
        ("data", advice.data),
    ):
        if rows:
            files += write_table([{k: cell(v) for k, v in r.items()} for r in rows], out, stem)
    files.append(out / "advice.json")
    files[-1].write_text(json.dumps(summary(advice), indent=1, default=str))
    figure = plot(advice, out / "data_efficiency.png")
    files += [figure] if figure else []
    files.append(out / "RESULTS.md")
    files[-1].write_text(results_markdown(advice, kendall(advice.ranking, advice.trials)))
    return files
