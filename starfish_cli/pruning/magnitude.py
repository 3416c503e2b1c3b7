"""Magnitude pruning: drop the smallest |W| of each layer."""

import torch

from starfish_cli.pruning.base import Pruner
from starfish_cli.pruning.registry import PRUNERS


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs()


@PRUNERS.register("magnitude")
class MagnitudePruner(Pruner):
    def score(self, name, weight, input_norms):
        return magnitude_scores(weight)
