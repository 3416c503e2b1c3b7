"""Random pruning: the control every real pruner must beat."""

import zlib

import torch

from starfish_cli.pruning.base import Pruner
from starfish_cli.pruning.registry import PRUNERS


@PRUNERS.register("random")
class RandomPruner(Pruner):
    def __init__(self, sparsity=0.5, pattern="unstructured", seed: int = 0):
        super().__init__(sparsity, pattern)
        self.seed = seed

    def score(self, name, weight, input_norms):
        # a per-layer stream derived from the run seed and the layer name: independent of layer order
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.rand(weight.shape, generator=generator)
