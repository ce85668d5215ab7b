"""Model soups (Wortsman et al., ICML 2022): the weights of several fine-tuned runs of one
architecture averaged. uniform: all of them; greedy: ingredients sorted by validation accuracy,
each added only if the soup's validation accuracy does not drop (so the greedy soup is never
below its best ingredient on validation). The chosen soup is tested once."""

from __future__ import annotations

import logging
from pathlib import Path

from src.errors import InvalidInput
from src.posthoc.scoring import accuracy, split_logits
from src.posthoc.sources import Outcome, Source, check_same_architecture
from src.posthoc.weights import average, with_weights
from src.posthoc.wise_ft import test_metrics

log = logging.getLogger(__name__)

RECIPES = ("greedy", "uniform")


class Soup:
    """`python -m src.posthoc method=soup parent_run_id=<sweep>` (or run_ids=[a,b,...])."""

    kind = "soup"

    def __init__(self, recipe: str = "greedy"):
        self.recipe = recipe

    def check(self, sources: list[Source]) -> None:
        if self.recipe not in RECIPES:
            raise InvalidInput(f"method.recipe={self.recipe}: choose one of {', '.join(RECIPES)}.")
        if len(sources) < 2:
            raise InvalidInput(
                f"method=soup needs at least 2 runs, got {len(sources)}: run_ids=[a,b,...] or "
                "parent_run_id=<a sweep's parent run with finished children>."
            )
        check_same_architecture(sources)
        check_same_splits(sources)

    def apply(self, sources: list[Source], datamodule, output_dir: Path) -> Outcome:
        # 1. Each ingredient on validation, best first.
        scores = {s.run_id: val_accuracy(s.model, datamodule) for s in sources}
        ranked = sorted(sources, key=lambda s: -scores[s.run_id])
        for s in ranked:
            log.info("ingredient %s: val acc %.4f", s.run_id, scores[s.run_id])
        # 2. The uniform soup always (a reference), the greedy one when asked.
        uniform = soup_of(ranked)
        uniform_acc = val_accuracy(uniform, datamodule)
        if self.recipe == "greedy":
            chosen, model, acc = greedy(ranked, scores, datamodule)
        else:
            chosen, model, acc = ranked, uniform, uniform_acc
        log.info(
            "%s soup of %d/%d runs: val acc %.4f (best ingredient %.4f, uniform %.4f)",
            self.recipe,
            len(chosen),
            len(ranked),
            acc,
            scores[ranked[0].run_id],
            uniform_acc,
        )
        metrics = {
            "val/acc": acc,
            "soup/uniform_val_acc": uniform_acc,
            "soup/best_ingredient_val_acc": scores[ranked[0].run_id],
            "soup/ingredients": float(len(chosen)),
        }
        tested, predictions = test_metrics(model, datamodule)  # 3. tested once
        metrics |= tested
        params = {
            "recipe": self.recipe,
            "candidates": [s.run_id for s in ranked],
            "ingredients": [s.run_id for s in chosen],
            "candidate_val_acc": [round(scores[s.run_id], 6) for s in ranked],
        }
        return Outcome(model, params, metrics, base=ranked[0], test_predictions=predictions)


def soup_of(ingredients: list[Source]):
    """The uniform average of the ingredients' weights, in the first one's model."""
    states = [s.model.state_dict() for s in ingredients]
    weights = [1.0 / len(states)] * len(states)
    return with_weights(ingredients[0].model, average(states, weights))


def greedy(ranked: list[Source], scores: dict[str, float], datamodule):
    """Wortsman et al.'s Algorithm 1: start from the best, add the next if val acc >= current."""
    chosen, model, best = [ranked[0]], ranked[0].model, scores[ranked[0].run_id]
    for candidate in ranked[1:]:
        trial = soup_of([*chosen, candidate])
        acc = val_accuracy(trial, datamodule)
        log.info(
            "  + %s: val acc %.4f (%s)",
            candidate.run_id,
            acc,
            "kept" if acc >= best else "left out",
        )
        if acc >= best:
            chosen, model, best = [*chosen, candidate], trial, acc
    return chosen, model, best


# What decides a run's train/val split (src/data/datamodule.py); the test split has its own seed.
SPLIT_KEYS = ("source", "seed", "fraction", "samples_per_class", "val_fraction", "test_fraction")


def check_same_splits(sources: list[Source]) -> None:
    """The soup is chosen and scored on the first run's validation split: an ingredient trained on
    other splits (another seed) may have trained on those images, and the soup's choice and its
    val/acc would be silently inflated (a soup over a seed sweep did exactly that)."""
    first = sources[0]
    splits_of = [
        {k: s.trained.config.get("dataset", {}).get(k) for k in SPLIT_KEYS} for s in sources
    ]
    for other, splits in zip(sources[1:], splits_of[1:], strict=True):
        differ = [
            f"{k} {splits[k]} vs {splits_of[0][k]}"
            for k in SPLIT_KEYS
            if splits[k] != splits_of[0][k]
        ]
        if differ:
            raise InvalidInput(
                f"run {other.run_id} was trained on other data splits than run {first.run_id} "
                f"(dataset {', '.join(differ)}): its training images may be in the validation "
                "split the soup is chosen on. Average runs trained with one seed and data set."
            )


def val_accuracy(model, datamodule) -> float:
    return accuracy(*split_logits(model, datamodule, "val"))
