"""Sparsity patterns: turning importance scores into keep-masks, applying them, measuring them.

Masks are boolean tensors shaped like the weight: True = kept, False = pruned to zero.
"""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from torch import nn

from starfish_cli.models import structure_of
from starfish_cli.runtime.errors import StarfishError

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    """`unstructured`, or N:M (at most N kept of every M consecutive input weights)."""

    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float | None:
        return 1.0 - self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def parse_pattern(text: str) -> Pattern:
    text = str(text)
    if text == "unstructured":
        return Pattern()
    match = _NM.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return Pattern(n, m)
    raise StarfishError(
        f"malformed pruner.pattern {text!r}: use 'unstructured' or N:M with 0 < N < M, e.g. pruner.pattern=2:4"
    )


def check_sparsity(value: float, what: str = "pruner.sparsity", units: str = "weights") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
        raise StarfishError(f"{what}={value!r} is outside [0, 1): give the fraction of {units} to remove, e.g. 0.5")
    return float(value)


def sparsity_for_layer(sparsity: float | Mapping[str, float], layer: str) -> float:
    """A float applies to every layer; a mapping of glob patterns gives the first match (else 0: dense)."""
    if isinstance(sparsity, Mapping):
        for pattern, value in sparsity.items():
            if fnmatch(layer, pattern):
                return float(value)
        return 0.0
    return float(sparsity)


def _prune_lowest(scores: torch.Tensor, num_pruned: int) -> torch.Tensor:
    """Keep-mask over the last dim of 2-D `scores`, dropping the `num_pruned` lowest per row."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if num_pruned > 0:
        # stable sort: ties are broken by position, so masks are reproducible
        lowest = torch.argsort(scores, dim=-1, stable=True)[..., :num_pruned]
        mask.scatter_(-1, lowest, False)
    return mask


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest-scoring `round(sparsity·numel)` weights of the whole matrix."""
    flat = scores.reshape(1, -1)
    return _prune_lowest(flat, round(sparsity * flat.numel())).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest-scoring `round(sparsity·in_features)` weights of each output row."""
    return _prune_lowest(scores, round(sparsity * scores.shape[-1]))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest-scoring of every M consecutive weights along the input dimension."""
    rows, cols = scores.shape
    if cols % m:
        raise StarfishError(f"N:M pattern {n}:{m} needs in_features divisible by {m}, got {cols}: choose another M")
    groups = scores.reshape(rows, cols // m, m)
    return _prune_lowest(groups, m - n).reshape(rows, cols)


def global_threshold_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold across all layers: prune the lowest `round(sparsity·total)` scores overall."""
    names = list(scores)
    flat = torch.cat([scores[name].reshape(-1).float() for name in names]).unsqueeze(0)
    keep = _prune_lowest(flat, round(sparsity * flat.numel())).squeeze(0)
    masks, offset = {}, 0
    for name in names:
        size = scores[name].numel()
        masks[name] = keep[offset:offset + size].reshape(scores[name].shape)
        offset += size
    return masks


def fits_nm(mask: torch.Tensor, n: int, m: int, exactly: bool = False) -> bool:
    """True when every group of M consecutive input weights of each row keeps at most N (`exactly`: N);
    False when the rows do not split into groups of M. A weight's nonzeros (`weight != 0`) are its mask."""
    rows, cols = mask.shape
    if cols % m:
        return False
    kept = mask.reshape(rows, cols // m, m).sum(-1)
    return bool((kept == n).all() if exactly else (kept <= n).all())


@torch.no_grad()
def apply_masks(layers: Mapping[str, nn.Linear], masks: Mapping[str, torch.Tensor]) -> None:
    for name, layer in layers.items():
        layer.weight.masked_fill_(~masks[name].to(layer.weight.device).bool(), 0.0)  # +0.0: an export restores the bits


@torch.no_grad()
def measure_sparsity(model: nn.Module, layers: Mapping[str, nn.Linear], dense: nn.Module | None = None,
                     block_weights: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Measured fraction of exactly-zero weights: per prunable layer, over prunable weights, over all parameters,
    and (given `block_weights`, every weight matrix inside the blocks) the share of those matrices' weights that
    are prunable and that are zero, so that "prunable" cannot hide a dense majority (an MoE's fused experts).

    Against `dense` (the model before pruning, with the same layer names), weights that are gone
    because whole units were removed count as pruned, and every fraction is of the dense sizes.
    """
    rename = structure_of(model).dense_name if dense is not None else str  # blocks keep their dense names
    dense_modules = dict(dense.named_modules()) if dense is not None else {}
    per_layer, pruned_prunable, total_prunable = {}, 0, 0
    for name, layer in layers.items():
        name = rename(name)
        size = dense_modules[name].weight.numel() if name in dense_modules else layer.weight.numel()
        pruned = int((layer.weight == 0).sum()) + size - layer.weight.numel()
        per_layer[name] = pruned / size
        pruned_prunable += pruned
        total_prunable += size
    for name, layer in (structure_of(dense).prunable_layers().items() if dense is not None else ()):
        if name not in per_layer:  # in a block that was removed whole
            per_layer[name] = 1.0
            pruned_prunable += layer.weight.numel()
            total_prunable += layer.weight.numel()
    remaining = sum(p.numel() for p in model.parameters())
    total_params = sum(p.numel() for p in dense.parameters()) if dense is not None else remaining
    zero_params = sum(int((p == 0).sum()) for p in model.parameters()) + total_params - remaining
    blocks = {}
    if block_weights is not None:
        weights = {rename(name): weight for name, weight in block_weights.items()}
        if dense is not None:  # the weights of removed blocks: all gone
            gone = {name: weight for name, weight in structure_of(dense).block_weights().items() if name not in weights}
            weights |= {name: weight.new_zeros(0) for name, weight in gone.items()}
        dense_parameters = dict(dense.named_parameters()) if dense is not None else {}
        sizes = {name: dense_parameters.get(name, weight).numel() for name, weight in weights.items()}
        total = max(sum(sizes.values()), 1)
        zero = sum(int((weight == 0).sum()) + sizes[name] - weight.numel() for name, weight in weights.items())
        blocks = {"block_weights": {"weights": sum(sizes.values()), "prunable": total_prunable / total,
                                    "zero": zero / total}}
    return {
        "prunable": pruned_prunable / max(total_prunable, 1),
        "overall": zero_params / max(total_params, 1),
        "prunable_weights": total_prunable,
        "total_parameters": total_params,
        "remaining_parameters": remaining,  # fewer than total_parameters when whole units were removed
        **blocks,
        "per_layer": per_layer,
    }


def masks_digest(masks: dict[str, torch.Tensor], kept: nn.Module | None = None) -> str:
    """A short content hash of the masks: ties a healed checkpoint to the pruned one it came from.
    A structurally pruned model has nothing left to mask: its weights (`kept`) say which units stayed."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].to(torch.uint8).cpu().numpy().tobytes())
    for name, tensor in (kept.state_dict().items() if kept is not None else ()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
