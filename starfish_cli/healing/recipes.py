"""STARFISH's healing recipes by pruning pattern: the budget, batch and learning rate that issue 26's screen
and map found best for each pattern on the embedded ViT (docs/results.md "Recipes by pattern"), and which
one a pruner's settings call for when the user names none."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float


RECIPES = {
    # the paper's: 80 steps on 240 images; the best measured for N:M (2:4 keeps 0.998 of dense) and up to 75%
    "reference": Recipe(epochs=10, batch_size=32, lr=6e-4),
    # whole heads and neurons: twice the learning rate for three times the steps (structured 50%: 0.971
    # against the reference's 0.961; 75%: 0.913 against 0.874)
    "structured": Recipe(epochs=30, batch_size=32, lr=1.2e-3),
    # ≥ 90% unstructured, where the reference recipe collapses: small batches at a 16× learning rate for about
    # the reference's 30-epoch wall time (magnitude 90%: 0.987 of dense against 0.757)
    "extreme": Recipe(epochs=20, batch_size=8, lr=9.6e-3),
}
EXTREME_FROM = 0.9  # unstructured sparsity from which the extreme recipe heals


def recipe_for(pruner: Mapping[str, Any], modality: str) -> str:
    """The recipe for a pruner config node's pattern. The recipes were measured on an image model only:
    language models keep the reference recipe."""
    if modality != "images":
        return "reference"
    if pruner.get("name") == "structured":
        return "structured"
    sparsity = pruner.get("sparsity")
    unstructured = str(pruner.get("pattern", "unstructured")) == "unstructured"
    if unstructured and isinstance(sparsity, int | float) and sparsity >= EXTREME_FROM:
        return "extreme"
    return "reference"
