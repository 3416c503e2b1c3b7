"""Magnitude pruning: drop the smallest |W| of each layer."""

from dataclasses import dataclass

import torch

from starfish_cli.pruning.base import WeightPruner
from starfish_cli.pruning.registry import PRUNERS


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs()


@PRUNERS.register("magnitude")
@dataclass(eq=False)
class MagnitudePruner(WeightPruner):
    def score(self, name, weight, input_norms):
        return magnitude_scores(weight)
