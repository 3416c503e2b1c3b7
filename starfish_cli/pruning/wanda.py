"""Wanda (Sun et al., 2023): |W| scaled by the input-feature norm, compared within each output row."""

import torch

from starfish_cli.errors import StarfishError
from starfish_cli.pruning.base import Pruner
from starfish_cli.pruning.registry import PRUNERS

COMPARISONS = ("row", "layer")


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ for weight W (out × in) and input norms ‖X_j‖₂ (in)."""
    return weight.abs() * input_norms.to(weight.device, weight.dtype).unsqueeze(0)


@PRUNERS.register("wanda")
class WandaPruner(Pruner):
    """`comparison`: scores compete within each output row (Wanda's default, also for ViTs) or
    across the whole layer (Wanda's `--prune_granularity layer`)."""

    needs_calibration = True

    def __init__(self, sparsity=0.5, pattern: str = "unstructured", comparison: str = "row"):
        super().__init__(sparsity, pattern)
        if comparison not in COMPARISONS:
            raise StarfishError(f"pruner.comparison={comparison!r}: choose one of {', '.join(COMPARISONS)}")
        self.compare = comparison

    def describe(self):
        return super().describe() | {"comparison": self.compare}

    def score(self, name, weight, input_norms):
        return wanda_scores(weight, input_norms)
