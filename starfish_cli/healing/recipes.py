"""STARFISH's healing recipes by pruning pattern: the budget, batch and learning rate that issue 26's screen
and map found best for each pattern on the embedded ViT (docs/results.md "Recipes by pattern"), and which
one a pruner's settings call for when the user names none."""

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float
    mode: str = "end_to_end"  # or blockwise: each block on its own, on the healed prefix's states
    loss: str = "cosine"


RECIPES = {
    # the paper's: 80 steps on 240 images; the best measured for N:M (2:4 keeps 0.998 of dense) and at 50%
    "reference": Recipe(epochs=10, batch_size=32, lr=6e-4),
    # 75% to 90% unstructured: small batches at 4× the learning rate in the reference's wall time (Wanda 75%:
    # 0.992 of dense against 0.980; at 50% it trails the reference by 0.06-0.18 points)
    "high": Recipe(epochs=7, batch_size=8, lr=2.4e-3),
    # whole heads and neurons: twice the learning rate for three times the steps (structured 50%: 0.971
    # against the reference's 0.961; 75%: 0.913 against 0.874)
    "structured": Recipe(epochs=30, batch_size=32, lr=1.2e-3),
    # ≥ 90% unstructured, where the reference recipe collapses: small batches at a 16× learning rate for about
    # the reference's 30-epoch wall time (magnitude 90%: 0.987 of dense against 0.757)
    "extreme": Recipe(epochs=20, batch_size=8, lr=9.6e-3),
    # language models: block-wise reconstruction, `high`'s batch and learning rate for each block. End to end,
    # STARFISH made SmolLM2-135M worse at Wanda 50% (perplexity 144.21 → 146.23) where block-wise closed 0.45
    # of the log-perplexity gap (docs/results.md "A real pretrained LLM")
    "lm": Recipe(epochs=7, batch_size=8, lr=2.4e-3, mode="blockwise"),
    # language models end to end, where a whole model trains at once: at `high`'s lr 2.4e-3 SmolLM2 got worse than
    # unhealed (146.23 against 144.21); at 1e-4 healing helps, with either loss (cosine 118.00, standardized 116.96)
    "lm_end_to_end": Recipe(epochs=7, batch_size=8, lr=1e-4),
}
HIGH_FROM, EXTREME_FROM = 0.75, 0.9  # the unstructured sparsities from which the high and extreme recipes heal


RECIPE_KEYS = tuple(field.name for field in fields(Recipe))


def with_recipe(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` (a healer's RECIPE_KEYS) with those left unset (None) taken from recipe `name`: the one place a
    recipe's settings are filled in (the config leaves them null; a STARFISH healer calls it as it is built)."""
    recipe = vars(RECIPES[name])
    return {key: recipe[key] if settings.get(key) is None else settings[key] for key in RECIPE_KEYS}


def recipe_for(pruner: Mapping[str, Any], modality: str) -> str:
    """The recipe for a pruner config node's pattern on a model of `modality` (language models: `lm`, whatever
    the pattern)."""
    if modality != "images":
        return "lm"
    if pruner.get("name") == "structured":
        return "structured"
    sparsity = pruner.get("sparsity")
    unstructured = str(pruner.get("pattern", "unstructured")) == "unstructured"
    if not unstructured or not isinstance(sparsity, int | float) or sparsity < HIGH_FROM:
        return "reference"  # N:M patterns are 50% sparse or less; a mapping of per-layer sparsities has no one level
    return "extreme" if sparsity >= EXTREME_FROM else "high"
