"""Wanda (Sun et al., 2023): |W| scaled by the input-feature norm, compared within each output row."""

import torch

from starfish_cli.pruning.base import Pruner
from starfish_cli.pruning.registry import PRUNERS


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ for weight W (out × in) and input norms ‖X_j‖₂ (in)."""
    return weight.abs() * input_norms.to(weight.device, weight.dtype).unsqueeze(0)


@PRUNERS.register("wanda")
class WandaPruner(Pruner):
    needs_calibration = True
    compare = "row"

    def score(self, name, weight, input_norms):
        return wanda_scores(weight, input_norms)
