"""What every pruner shares: the interface a stage calls, and for weight-level pruners the sparsity,
pattern and mask selection; the calibration statistics (input moments and norms)."""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import logging

import torch
from torch import nn

from starfish_cli.models import structure_of
from starfish_cli.models.outputs import last_block_output
from starfish_cli.runtime import distributed
from starfish_cli.registry import Component
from starfish_cli.runtime.progress import progress_bar
from starfish_cli.pruning.masks import (
    apply_masks,
    check_sparsity,
    layer_mask,
    nm_mask,
    parse_pattern,
    row_mask,
    sparsity_for_layer,
)

log = logging.getLogger("starfish")


class Pruner(Component):
    """What a stage calls: `prune(model, calibration)` zeroes (or removes) weights in place and returns the
    keep-masks by layer name; `needs_calibration` says whether it reads calibration inputs."""

    needs_calibration: ClassVar[bool] = False

    def prune(self, model: nn.Module, calibration: Iterable[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check_family(self, family) -> None:
        """Refuse options the model family (a ModelStructure class) cannot take: from the config alone, before
        any model is loaded, and again as a model is pruned (the Python API builds no config)."""


Sparsity = float | Mapping[str, float]  # one fraction for every layer, or glob pattern → fraction


@dataclass(eq=False)
class WeightPruner(Pruner):
    """Scores each prunable weight and zeroes the lowest-scoring ones: unstructured, or N:M.

    Subclasses implement `score`; `comparison` says whether scores compete across the whole
    layer ("layer") or within each output row ("row").
    """

    sparsity: Sparsity = 0.5
    pattern: str = "unstructured"
    comparison: ClassVar[str] = "layer"

    def check(self) -> None:
        if isinstance(self.sparsity, Mapping):
            self.sparsity = {str(k): check_sparsity(v, f"pruner.sparsity[{k!r}]") for k, v in self.sparsity.items()}
        else:
            self.sparsity = check_sparsity(self.sparsity)
        self._pattern = parse_pattern(self.pattern)
        self.pattern = str(self._pattern)

    def describe(self) -> dict[str, Any]:
        # an N:M pattern fixes the sparsity (2:4 → 0.5), whatever `sparsity` says
        return super().describe() | ({"sparsity": self._pattern.sparsity} if self._pattern.is_nm else {})

    def score(self, name: str, weight: torch.Tensor, input_norms: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def layer_sparsities(self, model: nn.Module, layers: Mapping[str, nn.Linear],
                         input_norms: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The sparsity of each prunable layer: `sparsity` (a float for all, or a mapping by name)."""
        return {name: sparsity_for_layer(self.sparsity, name) for name in layers}

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        if sparsity == 0.0:
            return torch.ones_like(scores, dtype=torch.bool)
        if self._pattern.is_nm:
            return nm_mask(scores, self._pattern.n, self._pattern.m)
        return row_mask(scores, sparsity) if self.comparison == "row" else layer_mask(scores, sparsity)

    @torch.no_grad()
    def prune(self, model: nn.Module, calibration: Iterable[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Zero the pruned weights of `model` in place and return the keep-masks by layer name."""
        layers = structure_of(model).prunable_layers()
        norms = input_norms(model, layers, calibration) if self.needs_calibration else {}
        with progress_bar(f"pruning ({self.registered_name})", len(layers)) as advance:
            masks, unseen = self._masks(layers, norms, self.layer_sparsities(model, layers, norms), advance)
        report_unseen(unseen)
        return masks

    # layer-by-layer onloading prunes one block at a time, on what that block receives
    reads_pruned_prefix: ClassVar[bool] = False  # True: from the already-pruned prefix (SparseGPT); False: dense

    def block_by_block(self) -> str | None:
        """None when a block's masks need nothing from the other blocks; else why they do."""
        return None

    @torch.no_grad()
    def prune_block(self, structure, number: int, block_inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Prune block `number` of `structure` alone, its statistics from `block_inputs` (what the block receives
        for each calibration batch); the masks of its layers."""
        layers = structure.block_layers(number)
        norms = input_norms(lambda x: structure.run_block(number, x), layers, block_inputs) \
            if self.needs_calibration else {}
        masks, unseen = self._masks(layers, norms, {name: sparsity_for_layer(self.sparsity, name) for name in layers})
        report_unseen(unseen)
        return masks

    def _masks(self, layers: Mapping[str, nn.Linear], norms: Mapping[str, torch.Tensor],
               sparsities: Mapping[str, float], advance=lambda: None) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Each layer's keep-mask, its pruned weights zeroed; and the layers no calibration token reached."""
        masks, unseen = {}, []
        for name, layer in layers.items():
            if self.needs_calibration and not norms[name].any():  # an MoE expert no calibration token reached
                unseen.append(name)
                scores = layer.weight.float().abs()
            else:
                scores = self.score(name, layer.weight.float(), norms.get(name))
            masks[name] = self.select(scores, sparsities[name])
            advance()
        apply_masks(layers, masks)
        return masks, unseen


def report_unseen(names: list[str]) -> None:
    if names:
        log.info("%d layers saw no calibration token (MoE experts no token was routed to, e.g. %s): pruned by "
                 "weight magnitude; more calibration data reaches more experts", len(names), names[0])


def through_the_blocks(model: nn.Module | Callable, inputs: torch.Tensor) -> None:
    """`model` on `inputs` up to the end of its last block, where the prunable layers end: what follows (a causal
    LM's head, vocabulary-wide logits of every token of the batch) is not run. A callable (one block) runs whole."""
    if isinstance(model, nn.Module):
        last_block_output(structure_of(model), inputs)
    else:
        model(inputs)


@torch.no_grad()
def input_statistics(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None,
    statistics: Callable[[torch.Tensor], list[torch.Tensor]],
) -> dict[str, list[torch.Tensor]]:
    """`statistics` (of a (tokens × in_features) float64 batch of a layer's inputs) summed over every token of
    every calibration item, and over ranks under torchrun (the one-process statistics); zeros for a layer
    that saw no token."""
    if calibration is None:
        raise ValueError("this pruner needs calibration images")
    totals = {name: statistics(torch.zeros(0, layer.in_features, dtype=torch.float64)) for name, layer in layers.items()}

    def accumulate(name: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            totals[name] = [total + value.cpu() for total, value in zip(totals[name], statistics(x))]
        return hook

    handles = [layer.register_forward_hook(accumulate(name)) for name, layer in layers.items()]
    try:
        for images in calibration:
            through_the_blocks(model, images)
    finally:
        for handle in handles:
            handle.remove()
    for name, values in totals.items():  # one collective per layer
        flat = distributed.all_reduce_sum(torch.cat([value.reshape(-1) for value in values]))
        totals[name] = [part.reshape(value.shape) for part, value in
                        zip(flat.split([value.numel() for value in values]), values)]
    return totals


def input_moments(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None
) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """(tokens, Σ x_j, Σ x_j²) per input feature j of each layer, over every token of every calibration image."""
    def moments(x):
        return [torch.tensor([float(x.shape[0])], dtype=torch.float64), x.sum(0), (x * x).sum(0)]
    return {name: (int(tokens.item()), sums, squares)
            for name, (tokens, sums, squares) in input_statistics(model, layers, calibration, moments).items()}


def input_grams(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None
) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """(tokens, Σ x, Σ x xᵀ) of each layer's inputs over every calibration token: what a least-squares fit on
    those inputs needs. in_features² per layer: give it a few layers."""
    def grams(x):
        return [torch.tensor([float(x.shape[0])], dtype=torch.float64), x.sum(0), x.T @ x]
    return {name: (int(tokens.item()), sums, gram)
            for name, (tokens, sums, gram) in input_statistics(model, layers, calibration, grams).items()}


def input_norms(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ per input feature j of each layer, over every token of every calibration image."""
    return {name: squares.sqrt().float() for name, (_, _, squares) in input_moments(model, layers, calibration).items()}
