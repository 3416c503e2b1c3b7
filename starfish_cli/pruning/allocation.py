"""How a pruner spreads its target sparsity over the blocks: the same in every block (`uniform`), or
OWL's outlier-weighted allocation (Yin et al., 2024): a block whose Wanda scores hold more outliers
(scores above `threshold` × the block's mean score) keeps more of its weights, the sparsities spanning
2 × `spread` around the target, and the mean over all prunable weights stays the target."""

from collections.abc import Sequence

import torch

from starfish_cli.runtime.errors import StarfishError

def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> float:
    """The share of a block's scores (all its layers together) above `threshold` × their mean."""
    flat = torch.cat([score.flatten().float() for score in scores])
    return float((flat > threshold * flat.mean()).double().mean())


def owl_sparsities(outlier_ratios: Sequence[float], block_sizes: Sequence[int], target: float,
                   spread: float) -> list[float]:
    """Per-block sparsity: the block with the most outliers at the lowest, the one with the fewest at
    the highest, 2 × `spread` apart, shifted so that the mean weighted by prunable weights is `target`."""
    ratios = torch.tensor(outlier_ratios, dtype=torch.float64)
    sizes = torch.tensor(block_sizes, dtype=torch.float64)
    span = ratios.max() - ratios.min()
    lowered = (ratios - ratios.min()) / span * 2 * spread if span > 0 else torch.zeros_like(ratios)
    sparsities = target - lowered
    sparsities += target - (sparsities * sizes).sum() / sizes.sum()
    if sparsities.min() < 0 or sparsities.max() >= 1:
        raise StarfishError(f"pruner.allocation=owl: pruner.allocation_spread={spread} puts a block's sparsity "
                            f"outside [0, 1) (from {sparsities.min():.3f} to {sparsities.max():.3f}): lower it")
    return sparsities.tolist()
