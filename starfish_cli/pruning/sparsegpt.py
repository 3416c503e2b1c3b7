"""SparseGPT (Frantar & Alistarh, 2023): prune with OBS on the Hessian XᵀX and update the kept weights.

Layers are pruned in execution order, block by block; each layer's Hessian comes from
inputs produced by the already-pruned prefix, so later layers compensate earlier errors.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from starfish_cli.models import structure_of
from starfish_cli.pruning.base import WeightPruner, report_unseen
from starfish_cli.pruning.masks import Pattern, sparsity_for_layer
from starfish_cli.pruning.registry import PRUNERS
from starfish_cli.registry import Range
from starfish_cli.runtime import distributed
from starfish_cli.runtime.progress import progress_bar


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, pattern: Pattern,
                    block_size: int = 128, damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune `weight` (out × in) given H = 2XXᵀ/n (in × in). Returns (updated weight, keep-mask).

    Columns are processed in blocks of `block_size` (lazy batch updates); within a block the
    mask is chosen adaptively from w² / [H⁻¹]_jj², then each pruned column's error is spread over
    the not-yet-processed columns through the Cholesky factor of H⁻¹.
    """
    W = weight.detach().clone().float()
    H = hessian.detach().clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0  # inputs that are always zero carry no information
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damping * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    pruned = torch.zeros_like(W, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1, Hinv1 = W[:, start:end].clone(), Hinv[start:end, start:end]
        errors = torch.zeros_like(W1)
        pruned1 = torch.zeros_like(W1, dtype=torch.bool)
        if not pattern.is_nm and sparsity > 0:
            saliency = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            count = round(saliency.numel() * sparsity)
            if count:
                lowest = torch.argsort(saliency.reshape(-1), stable=True)[:count]
                pruned1.view(-1)[lowest] = True
        for i in range(end - start):
            column = W1[:, i]
            if pattern.is_nm and i % pattern.m == 0:
                group = W1[:, i:i + pattern.m] ** 2 / torch.diag(Hinv1)[i:i + pattern.m].reshape(1, -1) ** 2
                drop = torch.topk(group, pattern.m - pattern.n, dim=1, largest=False).indices
                pruned1.scatter_(1, i + drop, True)
            kept = column.clone()
            kept[pruned1[:, i]] = 0.0
            error = (column - kept) / Hinv1[i, i]
            W1[:, i:] -= error.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = kept
            errors[:, i] = error
        W[:, start:end] = W1
        pruned[:, start:end] = pruned1
        W[:, end:] -= errors @ Hinv[start:end, end:]
    W[pruned] = 0.0
    return W.to(weight.dtype), ~pruned


def input_hessian(inputs: Iterable[torch.Tensor], features: int) -> tuple[torch.Tensor, int]:
    """H = 2·XᵀX / n over every token of every batch of layer inputs (of every rank's share of them under
    torchrun: XᵀX and n summed over ranks), and n."""
    H = torch.zeros(features, features, dtype=torch.float64)
    tokens = torch.zeros(1, dtype=torch.float64)
    for x in inputs:
        x = x.reshape(-1, features).double().cpu()
        H += x.T @ x
        tokens += x.shape[0]
    distributed.all_reduce_sum(H)
    count = int(distributed.all_reduce_sum(tokens).item())
    return (2.0 * H / max(count, 1)).float(), count


@PRUNERS.register("sparsegpt")
@dataclass(eq=False)
class SparseGPTPruner(WeightPruner):
    needs_calibration = True
    block_size: Annotated[int, Range(1)] = 128  # columns per lazy batch update
    damping: Annotated[float, Range(0)] = 0.01  # a fraction of the mean diagonal of H

    @torch.no_grad()
    def prune(self, model: nn.Module, calibration=None) -> dict[str, torch.Tensor]:
        if calibration is None:
            raise ValueError("sparsegpt needs calibration images")
        structure = structure_of(model)
        block_inputs = structure.first_block_inputs(calibration)
        masks = {}
        with progress_bar(f"pruning ({self.registered_name})", len(structure.prunable_layers())) as advance:
            for number in range(len(structure.blocks)):
                masks |= self.prune_block(structure, number, block_inputs, advance)
                block_inputs = [structure.run_block(number, x) for x in block_inputs]  # the pruned block feeds the next
        return masks

    reads_pruned_prefix = True

    @torch.no_grad()
    def prune_block(self, structure, number, block_inputs, advance=lambda: None):
        masks, unseen = {}, []
        for name, layer in structure.block_layers(number).items():  # execution order: qkv, proj, fc1, fc2
            if not self._prune_layer(structure, number, name, layer, block_inputs, masks):
                unseen.append(name)
            advance()
        report_unseen(unseen)
        return masks

    def _prune_layer(self, structure, number: int, name: str, layer: nn.Linear, block_inputs: list[torch.Tensor],
                     masks: dict[str, torch.Tensor]) -> bool:
        """Prune one layer of block `number` on the Hessian of its inputs, as the already-pruned prefix makes them;
        False when no calibration token reached it (an MoE expert): then by weight magnitude, weights unchanged."""
        captured = []
        hook = layer.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            for x in block_inputs:
                structure.run_block(number, x)
        finally:
            hook.remove()
        hessian, tokens = input_hessian(captured, layer.in_features)
        if not tokens:
            masks[name] = self.select(layer.weight.float().abs(), sparsity_for_layer(self.sparsity, name))
            layer.weight.mul_(masks[name])
            return False
        hessian = hessian.to(layer.weight.device)
        new_weight, masks[name] = sparsegpt_prune(
            layer.weight, hessian, sparsity_for_layer(self.sparsity, name), self._pattern,
            self.block_size, self.damping)
        layer.weight.copy_(new_weight)
        return True
