"""Depth pruning: the blocks that change their input least, taken out whole.

A block's influence is 1 − cos(its input, its output) per token, averaged over every calibration token (ShortGPT's
Block Influence, Men et al. 2024; Gromov et al.'s angular distance ranks the same way for a single block): a block
whose output points where its input did adds least to the residual stream.
"""

import torch
import torch.nn.functional as F

from starfish_cli.models.base import ModelStructure
from starfish_cli.runtime import distributed
from starfish_cli.runtime.errors import StarfishError


def blocks_to_remove(layers: float, total: int) -> int:
    """`pruner.layers` as a count: a whole number of blocks, or a fraction of them in (0, 1)."""
    if isinstance(layers, bool) or not isinstance(layers, int | float) or layers < 0 or (
            layers >= 1 and float(layers) != int(layers)):
        raise StarfishError(f"pruner.layers={layers!r}: give a number of blocks to remove (e.g. 6) or a fraction "
                            "of them in [0, 1) (e.g. 0.2)")
    count = int(layers) if layers >= 1 else round(float(layers) * total)
    if count >= total:
        raise StarfishError(f"pruner.layers={layers} removes {count} of the model's {total} blocks: at least one stays")
    return count


@torch.no_grad()
def block_influence(structure: ModelStructure, calibration) -> torch.Tensor:
    """Each block's mean 1 − cos(input, output) over the calibration tokens (summed over ranks under torchrun)."""
    totals = torch.zeros(len(structure.blocks), dtype=torch.float64)
    tokens = torch.zeros(1, dtype=torch.float64)
    for inputs in calibration:
        hidden = structure.embed(inputs)
        for index in range(len(structure.blocks)):
            output = structure.run_block(index, hidden)
            totals[index] += (1 - F.cosine_similarity(hidden.double(), output.double(), dim=-1)).sum().cpu()
            hidden = output
        tokens += hidden.shape[:-1].numel()
    flat = distributed.all_reduce_sum(torch.cat([totals, tokens]))
    return flat[:-1] / flat[-1].clamp_min(1)


def least_influential(influence: torch.Tensor, count: int) -> list[int]:
    """The `count` blocks of lowest influence (ties: the later block goes first, as the last blocks of a deep
    model are the ones usually redundant)."""
    order = sorted(range(len(influence)), key=lambda index: (float(influence[index]), -index))
    return sorted(order[:count])
