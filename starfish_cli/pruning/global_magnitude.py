"""Global magnitude pruning: one |W| threshold across all prunable layers, so layers end up unequally sparse."""

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.pruning.base import WeightPruner
from starfish_cli.pruning.masks import apply_masks, global_threshold_masks
from starfish_cli.pruning.registry import PRUNERS


@PRUNERS.register("global_magnitude")
@dataclass(eq=False)
class GlobalMagnitudePruner(WeightPruner):
    def check(self):
        super().check()
        if isinstance(self.sparsity, Mapping) or self._pattern.is_nm:
            raise StarfishError("global_magnitude takes one sparsity for all layers and pattern=unstructured: "
                                "use pruner=magnitude for per-layer or N:M pruning")

    def block_by_block(self):
        return "global_magnitude draws one threshold over every layer"

    @torch.no_grad()
    def prune(self, model, calibration=None):
        layers = structure_of(model).prunable_layers()
        masks = global_threshold_masks({name: layer.weight.abs() for name, layer in layers.items()}, self.sparsity)
        apply_masks(layers, masks)
        return masks
