"""Random pruning: the control every real pruner must beat."""

import zlib
from dataclasses import dataclass

import torch

from starfish_cli.pruning.base import WeightPruner
from starfish_cli.pruning.registry import PRUNERS


@PRUNERS.register("random")
@dataclass(eq=False)
class RandomPruner(WeightPruner):
    seed: int = 0

    def score(self, name, weight, input_norms):
        # a per-layer stream derived from the run seed and the layer name: independent of layer order
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.rand(weight.shape, generator=generator)
