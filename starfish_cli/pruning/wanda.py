"""Wanda (Sun et al., 2023): |W| scaled by the input-feature norm, compared within each output row."""

import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.pruning.allocation import ALLOCATIONS, outlier_ratio, owl_sparsities
from starfish_cli.pruning.base import Pruner
from starfish_cli.pruning.registry import PRUNERS

COMPARISONS = ("row", "layer")


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ for weight W (out × in) and input norms ‖X_j‖₂ (in)."""
    return weight.abs() * input_norms.to(weight.device, weight.dtype).unsqueeze(0)


@PRUNERS.register("wanda")
class WandaPruner(Pruner):
    """`comparison`: scores compete within each output row (Wanda's default, also for ViTs) or
    across the whole layer (Wanda's `--prune_granularity layer`). `allocation`: the same sparsity in
    every block, or OWL's outlier-weighted sparsity per block (pruning.allocation)."""

    needs_calibration = True

    def __init__(self, sparsity=0.5, pattern: str = "unstructured", comparison: str = "row",
                 allocation: str = "uniform", outlier_threshold: float = 5.0, allocation_spread: float = 0.08):
        super().__init__(sparsity, pattern)
        if comparison not in COMPARISONS:
            raise StarfishError(f"pruner.comparison={comparison!r}: choose one of {', '.join(COMPARISONS)}")
        if allocation not in ALLOCATIONS:
            raise StarfishError(f"pruner.allocation={allocation!r}: choose one of {', '.join(ALLOCATIONS)}")
        if allocation == "owl" and (self.pattern.is_nm or not isinstance(self.sparsity, float)):
            raise StarfishError("pruner.allocation=owl spreads one unstructured sparsity over the blocks: "
                                "use a single pruner.sparsity and pattern=unstructured")
        if not outlier_threshold > 0 or not 0 <= allocation_spread < 0.5:
            raise StarfishError(f"pruner.outlier_threshold={outlier_threshold} must be > 0 and "
                                f"pruner.allocation_spread={allocation_spread} in [0, 0.5)")
        self.compare, self.allocation = comparison, allocation
        self.outlier_threshold, self.allocation_spread = outlier_threshold, allocation_spread

    def describe(self):
        described = super().describe() | {"comparison": self.compare, "allocation": self.allocation}
        if self.allocation == "owl":
            described |= {"outlier_threshold": self.outlier_threshold, "allocation_spread": self.allocation_spread}
        return described

    def layer_sparsities(self, model, layers, input_norms):
        if self.allocation == "uniform":
            return super().layer_sparsities(model, layers, input_norms)
        structure = structure_of(model)
        prefixes = [f"{structure.block_name(number)}." for number in range(len(structure.blocks))]
        blocks = [{name: layer for name, layer in layers.items() if name.startswith(prefix)} for prefix in prefixes]
        # one block's scores at a time (scored again for the masks): all of a large model's at once would not fit
        ratios = [outlier_ratio([self.score(name, layer.weight.float(), input_norms[name])
                                 for name, layer in block.items()], self.outlier_threshold) for block in blocks]
        sizes = [sum(layer.weight.numel() for layer in block.values()) for block in blocks]
        per_block = owl_sparsities(ratios, sizes, self.sparsity, self.allocation_spread)
        return {name: sparsity for block, sparsity in zip(blocks, per_block) for name in block}

    def score(self, name, weight, input_norms):
        return wanda_scores(weight, input_norms)
