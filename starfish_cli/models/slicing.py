"""Whole units (attention heads, MLP channels) sliced out of linear layers: the rows they own in the layers
that produce them, the columns they own in the layers that read them. The families say which are whose."""

from collections.abc import Sequence

import torch
from torch import nn

from starfish_cli.models.base import Units
from starfish_cli.runtime.errors import StarfishError


def kept_units(count: int, removed: Sequence[int], what: str) -> torch.Tensor:
    """A keep-mask over `count` units without `removed` (at least one stays)."""
    removed = sorted({int(unit) for unit in removed})
    if removed and (removed[0] < 0 or removed[-1] >= count):
        raise ValueError(f"{what}: unit indices {removed} outside 0…{count - 1}")
    if len(removed) >= count:
        raise StarfishError(f"{what}: removing all {count} would leave nothing; at least one stays")
    keep = torch.ones(count, dtype=torch.bool)
    keep[removed] = False
    return keep


def keep_rows(layer: nn.Linear, rows: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[rows].clone(), requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[rows].clone(), requires_grad=layer.bias.requires_grad)
    layer.out_features = len(rows)


def keep_columns(layer: nn.Linear, columns: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[:, columns].clone(), requires_grad=layer.weight.requires_grad)
    layer.in_features = len(columns)


@torch.no_grad()
def slice_units(units: dict[str, Units], modules: dict[str, nn.Module], removed: dict[str, Sequence[int]],
                what: str) -> None:
    """Slice the `removed` units of each kind out of the layers `units` names (rows and columns sorted, so that
    the parts of a fused matrix stay apart)."""
    for kind, gone in removed.items():
        kept = kept_units(units[kind].count, gone, f"{what} {kind}")
        for layer, rows in units[kind].rows.items():
            keep_rows(modules[layer], rows[kept].reshape(-1).sort().values)
        for layer, columns in units[kind].columns.items():
            keep_columns(modules[layer], columns[kept].reshape(-1).sort().values)
