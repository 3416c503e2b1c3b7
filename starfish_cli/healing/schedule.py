"""Gradual prune → heal: the nested keep-masks of a sparsity schedule that ends at the pruner's masks,
and how one step budget splits over its stages."""

from collections.abc import Mapping, Sequence

import torch

from starfish_cli.runtime.errors import StarfishError


def check_schedule(schedule: Sequence[float]) -> list[float]:
    """The schedule as floats (each already declared in (0, 1)), or a one-line error unless ascending."""
    values = [float(s) for s in schedule]
    if any(a >= b for a, b in zip(values, values[1:])):
        raise StarfishError(f"healer.schedule={values} must be strictly ascending, e.g. [0.5, 0.75]")
    return values


def check_targets(schedule: Sequence[float], masks: Mapping[str, torch.Tensor],
                  dense_shapes: Mapping[str, torch.Size]) -> None:
    """Every intermediate sparsity must lie below each layer's final one (its mask's fraction of zeros),
    and every mask must be shaped like its dense weight, whose values the first stage restores."""
    if not masks or any(mask.shape != dense_shapes.get(name) for name, mask in masks.items()):
        raise StarfishError("healer.schedule needs the pruner's masks, and a structurally pruned model "
                            "(pruner=structured) has none: use healer.schedule=[]")
    name, target = min(((name, float((~mask.bool()).float().mean())) for name, mask in masks.items()),
                       key=lambda item: item[1])
    if schedule[-1] >= target:
        raise StarfishError(f"healer.schedule={list(schedule)}: every sparsity must be below each layer's final "
                            f"one, and {name} ends at {target:.4f}")


def stage_masks(final: torch.Tensor, dense: torch.Tensor, sparsities: Sequence[float]) -> list[torch.Tensor]:
    """One layer's keep-masks at each of `sparsities` (ascending), then `final`. A stage keeps what
    `final` keeps plus the largest-|dense| weights among those `final` removes, so that round(s·numel)
    are pruned; all stages take from one ordering, so each mask contains the next."""
    final = final.bool()
    removed = (~final).flatten().nonzero().squeeze(1)
    order = removed[torch.argsort(dense.flatten()[removed].abs(), descending=True, stable=True)]
    masks = []
    for sparsity in sparsities:
        mask = final.flatten().clone()
        mask[order[:max(0, len(order) - round(sparsity * final.numel()))]] = True
        masks.append(mask.view_as(final))
    return masks + [final]


def split_steps(total: int, intermediate: int, share: float) -> list[int]:
    """Steps per stage: `share` of `total` divided equally over the `intermediate` stages (rounded),
    the rest to the final stage, which keeps at least one step when there is any."""
    each = min(round(share * total / intermediate), max(total - 1, 0) // intermediate)
    return [each] * intermediate + [total - each * intermediate]


def pruned_fraction(masks: Mapping[str, torch.Tensor]) -> float:
    """The fraction of the masked weights that a set of keep-masks removes."""
    return sum(int((~mask.bool()).sum()) for mask in masks.values()) / max(sum(m.numel() for m in masks.values()), 1)
