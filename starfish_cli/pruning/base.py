"""What every pruner shares: the interface a stage calls, and for weight-level pruners the sparsity,
pattern and mask selection; the calibration statistics (input moments and norms)."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import logging

import torch
from torch import nn

from starfish_cli.models import structure_of
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


@torch.no_grad()
def input_moments(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None
) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """(tokens, Σ x_j, Σ x_j²) per input feature j of each layer, over every token of every calibration image —
    of every rank's share of them under torchrun (summed over ranks: the one-process statistics)."""
    if calibration is None:
        raise ValueError("this pruner needs calibration images")
    moments = {name: [0, torch.zeros(layer.in_features, dtype=torch.float64),
                      torch.zeros(layer.in_features, dtype=torch.float64)] for name, layer in layers.items()}

    def accumulate(name: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            moments[name][0] += x.shape[0]
            moments[name][1] += x.sum(0).cpu()
            moments[name][2] += (x * x).sum(0).cpu()
        return hook

    handles = [layer.register_forward_hook(accumulate(name)) for name, layer in layers.items()]
    try:
        for images in calibration:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    for name, (tokens, sums, squares) in moments.items():
        total = distributed.all_reduce_sum(torch.cat([torch.tensor([float(tokens)], dtype=torch.float64), sums, squares]))
        moments[name] = [int(total[0]), total[1:1 + len(sums)], total[1 + len(sums):]]
    return {name: tuple(value) for name, value in moments.items()}


@torch.no_grad()
def input_grams(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None
) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """(tokens, Σ x, Σ x xᵀ) of each layer's inputs over every calibration token (summed over ranks under
    torchrun): what a least-squares fit on those inputs needs. in_features² per layer: give it a few layers."""
    if calibration is None:
        raise ValueError("this pruner needs calibration images")
    grams = {name: [torch.zeros(1, dtype=torch.float64), torch.zeros(layer.in_features, dtype=torch.float64),
                    torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)]
             for name, layer in layers.items()}

    def accumulate(name: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            grams[name][0] += x.shape[0]
            grams[name][1] += x.sum(0).cpu()
            grams[name][2] += (x.T @ x).cpu()
        return hook

    handles = [layer.register_forward_hook(accumulate(name)) for name, layer in layers.items()]
    try:
        for images in calibration:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (int(distributed.all_reduce_sum(tokens).item()), distributed.all_reduce_sum(sums),
                   distributed.all_reduce_sum(gram)) for name, (tokens, sums, gram) in grams.items()}


def input_norms(
    model: nn.Module, layers: Mapping[str, nn.Linear], calibration: Iterable[torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ per input feature j of each layer, over every token of every calibration image."""
    return {name: squares.sqrt().float() for name, (_, _, squares) in input_moments(model, layers, calibration).items()}
