"""Wanda (Sun et al., 2023): |W| scaled by the input-feature norm, compared within each output row."""

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.pruning.allocation import outlier_ratio, owl_sparsities
from starfish_cli.pruning.base import WeightPruner
from starfish_cli.pruning.registry import PRUNERS
from starfish_cli.registry import Range


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ for weight W (out × in) and input norms ‖X_j‖₂ (in)."""
    return weight.abs() * input_norms.to(weight.device, weight.dtype).unsqueeze(0)


@PRUNERS.register("wanda")
@dataclass(eq=False)
class WandaPruner(WeightPruner):
    """`comparison`: scores compete within each output row (Wanda's default, also for ViTs) or
    across the whole layer (Wanda's `--prune_granularity layer`). `allocation`: the same sparsity in
    every block, or OWL's outlier-weighted sparsity per block (pruning.allocation)."""

    needs_calibration = True
    comparison: Literal["row", "layer"] = "row"
    allocation: Literal["uniform", "owl"] = "uniform"
    outlier_threshold: Annotated[float, Range(0, low_open=True)] = 5.0  # owl: an outlier is above this × the block's mean
    allocation_spread: Annotated[float, Range(0, 0.5, high_open=True)] = 0.08  # owl: block sparsities span target ± this

    def check(self):
        super().check()
        if self.allocation == "owl" and (self._pattern.is_nm or not isinstance(self.sparsity, float)):
            raise StarfishError("pruner.allocation=owl spreads one unstructured sparsity over the blocks: "
                                "use a single pruner.sparsity and pattern=unstructured")

    def block_by_block(self):
        return "pruner.allocation=owl compares every block's scores" if self.allocation == "owl" else None

    def layer_sparsities(self, model, layers, input_norms):
        if self.allocation == "uniform":
            return super().layer_sparsities(model, layers, input_norms)
        structure = structure_of(model)
        blocks = [{name: layers[name] for name in structure.block_layers(number) if name in layers}
                  for number in range(len(structure.blocks))]
        # one block's scores at a time (scored again for the masks): all of a large model's at once would not fit
        ratios = [outlier_ratio([self.score(name, layer.weight.float(), input_norms[name])
                                 for name, layer in block.items()], self.outlier_threshold) for block in blocks]
        sizes = [sum(layer.weight.numel() for layer in block.values()) for block in blocks]
        per_block = owl_sparsities(ratios, sizes, self.sparsity, self.allocation_spread)
        return {name: sparsity for block, sparsity in zip(blocks, per_block) for name in block}

    def score(self, name, weight, input_norms):
        return wanda_scores(weight, input_norms)
