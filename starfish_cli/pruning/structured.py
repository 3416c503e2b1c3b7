"""Structured pruning: whole attention heads and MLP neurons removed physically, so the model is smaller.

A unit's score sums a per-weight score over the weights it owns (its rows of qkv/fc1, its
columns of proj/fc2; the family says which): `magnitude` ‖W‖₂ of those weights, `activation`
Σ|W_ij|·‖X_j‖₂ (Wanda's score, summed over the unit), `fluctuation` FLAP's Σ_j Var(X_j)·‖W_:,j‖²
over the unit's output-projection columns (An et al., AAAI 2024), `output` the order in which a greedy
removal that keeps the block's branch output closest to the dense one takes the units (structured OBS on
the output projection's inputs: at each step the unit whose loss, after the least-squares update of the
rest, changes the output least over the calibration tokens). `compensate=mean` (or `true`) adds
the removed units' mean contribution to the output projection's bias, as FLAP does;
`compensate=least_squares` folds it into the kept columns and the bias by the least-squares fit of the
removed inputs on the kept ones over the calibration tokens (closed form, no gradient step).
`layers` takes whole blocks out first, those that change their input least (pruning.depth); the units are then
scored on the blocks that stay. A causal LM keeps the same sizes in every layer (one config describes it), so
its heads and neurons are chosen per block; its attention heads go in whole KV groups.
"""

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.models.base import Units
from starfish_cli.pruning.base import Pruner, input_grams, input_moments
from starfish_cli.pruning.depth import block_influence, blocks_to_remove, least_influential
from starfish_cli.pruning.masks import check_sparsity
from starfish_cli.pruning.registry import PRUNERS
from starfish_cli.runtime.progress import progress_bar

log = logging.getLogger("starfish")
KINDS = {"heads": ("heads", "heads"), "neurons": ("mlp", "MLP neurons")}  # unit kind → (option, in words)


def weight_scores(criterion: str, weight: torch.Tensor, moments: tuple | None) -> torch.Tensor:
    """The per-weight score that a unit sums over the weights it owns (weight: out × in)."""
    weight = weight.double()
    if criterion == "magnitude":
        return weight * weight
    tokens, sums, squares = moments
    if criterion == "activation":
        return weight.abs() * squares.sqrt().unsqueeze(0)
    variance = (squares / tokens - (sums / tokens) ** 2).clamp_min(0)
    return weight * weight * variance.unsqueeze(0)


def unit_scores(units: Units, scores: dict[str, torch.Tensor], rows: bool = True) -> torch.Tensor:
    """Σ of `scores` over each unit's rows (when `rows`) and columns: one value per unit."""
    total = torch.zeros(units.count, dtype=torch.float64)
    for layer, index in (units.rows.items() if rows else ()):
        total += scores[layer][index].sum(dim=(1, 2))  # (units × rows per unit × in)
    for layer, index in units.columns.items():
        total += scores[layer][:, index].sum(dim=(0, 2))  # (out × units × columns per unit)
    return total


def standardized(scores: torch.Tensor) -> torch.Tensor:
    """(s − mean) / std within one block, so that blocks of different scale compare (FLAP's global ranking)."""
    spread = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
    return (scores - scores.mean()) / spread if spread > 0 else torch.zeros_like(scores)


def lowest_per_block(scores: list[torch.Tensor], fraction: float, setting: str, units: str) -> list[list[int]]:
    """The `round(fraction·n)` lowest-scoring units of each block (ties: the earlier unit goes first)."""
    removed = []
    for number, block_scores in enumerate(scores):
        size = len(block_scores)
        count = round(fraction * size)
        if count >= size:
            raise StarfishError(f"{setting} removes all {size} {units} of block {number}: give at most "
                                f"{(size - 1) / size:.3g}, so one stays in every block")
        removed.append(sorted(torch.argsort(block_scores, stable=True)[:count].tolist()))
    return removed


def lowest_overall(scores: list[torch.Tensor], fraction: float, setting: str, units: str) -> list[list[int]]:
    """The `round(fraction·total)` lowest standardized scores over all blocks, each block keeping its best unit."""
    flat = torch.cat([standardized(block_scores) for block_scores in scores])
    owner = torch.cat([torch.full((len(s),), number) for number, s in enumerate(scores)])
    position = torch.cat([torch.arange(len(s)) for s in scores])
    count = round(fraction * len(flat))
    if count > len(flat) - len(scores):
        raise StarfishError(f"{setting} with scope=global removes {count} of {len(flat)} {units}, more than can go "
                            f"with one left in every block: give at most {(len(flat) - len(scores)) / len(flat):.3g}")
    removed: list[list[int]] = [[] for _ in scores]
    for unit in torch.argsort(flat, stable=True).tolist():
        if count == 0:
            break
        block = int(owner[unit])
        if len(removed[block]) < len(scores[block]) - 1:
            removed[block].append(int(position[unit]))
            count -= 1
    return [sorted(units) for units in removed]


def removal_order(weight: torch.Tensor, gram: torch.Tensor, tokens: int, columns: torch.Tensor,
                  limit: int | None = None, damping: float = 0.01) -> torch.Tensor:
    """Greedy output-aware order of the units whose input columns of y = W x are `columns` (units × columns
    per unit): each step removes the unit that raises Σ‖Δy‖² least over the calibration tokens once the
    others take over what they can (the OBS update W ← W − W_C S⁻¹ H⁻¹_C,: with S = H⁻¹_CC, H = E[x xᵀ]
    damped); the error of unit C is tr(W_C S⁻¹ W_Cᵀ). Returns each unit's step (0 goes first), so the
    lowest k are the greedy choice of k for every k; with `limit`, it stops after that many and the units
    left all get step `limit`."""
    hessian = gram.double() / tokens
    hessian = hessian + damping * hessian.diagonal().mean() * torch.eye(len(hessian), dtype=hessian.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    weight = weight.double().clone()
    steps = len(columns) if limit is None else min(limit, len(columns))
    order = torch.full((len(columns),), float(steps), dtype=torch.float64)
    left = torch.ones(len(columns), dtype=torch.bool)
    for step in range(steps):
        blocks = inverse[columns[:, :, None], columns[:, None, :]]  # units × k × k
        taken = weight[:, columns].permute(1, 2, 0)  # units × k × out
        solved = torch.linalg.solve(blocks[left], taken[left])
        error = torch.full((len(columns),), float("inf"), dtype=torch.float64)
        error[left] = (taken[left] * solved).sum(dim=(1, 2))
        unit = int(torch.argmin(error))  # ties: the earlier unit
        order[unit], left[unit] = step, False
        if step + 1 == steps:
            break
        chosen = columns[unit]
        update = torch.linalg.solve(inverse[chosen][:, chosen], inverse[chosen])  # S⁻¹ H⁻¹_C,:
        weight -= weight[:, chosen] @ update
        inverse -= inverse[:, chosen] @ update
    return order


def mean_contribution(weight: torch.Tensor, mean: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """W[:, columns] · mean(x)[columns]: what the removed input columns add to the output on average."""
    columns = columns.reshape(-1)
    return weight[:, columns].double() @ mean[columns].double()


def least_squares_fold(weight: torch.Tensor, gram: torch.Tensor, sums: torch.Tensor, tokens: int,
                       kept: torch.Tensor, with_bias: bool,
                       damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """What to add to the kept columns (out × kept) and to the bias (out) of y = W x + b so that, without the
    input columns outside `kept` (a boolean mask), it stays closest to y over the calibration tokens: x_removed ≈
    A·z by least squares, z = (x_kept, 1) (without the 1 where the layer has no bias), then W_removed·A folds
    into the rest. `gram` = Σ x xᵀ, `sums` = Σ x over `tokens` tokens; `damping` × the mean diagonal
    regularizes the fit."""
    removed = ~kept
    second, mean = gram.double() / tokens, sums.double() / tokens
    inputs = second[kept][:, kept]  # E[z zᵀ], then E[x_removed zᵀ]
    cross = second[removed][:, kept]
    if with_bias:
        inputs = torch.cat([torch.cat([inputs, mean[kept, None]], 1),
                            torch.cat([mean[kept], mean.new_ones(1)])[None]], 0)
        cross = torch.cat([cross, mean[removed, None]], 1)
    inputs = inputs + damping * inputs.diagonal().mean() * torch.eye(len(inputs), dtype=inputs.dtype)
    fit = torch.linalg.solve(inputs, cross.T).T  # A: removed × (kept [+ 1])
    folded = weight[:, removed].double() @ fit
    return (folded[:, :-1], folded[:, -1]) if with_bias else (folded, folded.new_zeros(weight.shape[0]))


@PRUNERS.register("structured")
@dataclass(eq=False)
class StructuredPruner(Pruner):
    """Removes `heads` and `mlp` (fractions) of each block's attention heads and MLP neurons, ranked by
    `criterion` within each block (`scope=block`) or over all blocks (`scope=global`, scores standardized
    per block), after `layers` whole blocks (a count, or a fraction in (0, 1)). At least one head and one
    neuron stay in every block. Nothing is left to mask: every remaining weight trains."""

    heads: float = 0.5
    mlp: float = 0.5
    layers: float = 0  # whole blocks removed, the least influential on the calibration set
    criterion: Literal["magnitude", "activation", "fluctuation", "output"] = "fluctuation"
    scope: Literal["block", "global"] = "block"
    compensate: Literal[False, True, "none", "mean", "least_squares"] = "none"  # false: none, true: mean (FLAP's)

    def check(self):
        self.heads = check_sparsity(self.heads, "pruner.heads", "attention heads")
        self.mlp = check_sparsity(self.mlp, "pruner.mlp", "MLP neurons")
        self.compensate = {False: "none", True: "mean"}.get(self.compensate, self.compensate)
        blocks_to_remove(self.layers, total=2**31)  # its type and range; the count is checked against the model
        if self.criterion == "output" and self.scope != "block":
            raise StarfishError("pruner.criterion=output orders the units within each block, not across blocks: "
                                "use pruner.scope=block with it")

    def check_family(self, family) -> None:
        if self.layers and not family.removes_blocks:
            raise StarfishError(f"pruner.layers={self.layers}: the {family.family} family cannot remove whole blocks "
                                "(causal LMs can): leave pruner.layers=0")
        if family.uniform_units and self.scope != "block":
            raise StarfishError(f"pruner.scope={self.scope}: a {family.family} model keeps the same sizes in every "
                                "layer (one config describes it): use pruner.scope=block")

    @property
    def needs_calibration(self) -> bool:
        return self.criterion != "magnitude" or self.compensate != "none" or self.layers != 0

    def describe(self):
        return super().describe() | {"pattern": "heads+neurons" + ("+layers" if self.layers else "")}

    @torch.no_grad()
    def prune(self, model: nn.Module, calibration=None) -> dict[str, torch.Tensor]:
        structure = structure_of(model)
        self.check_family(type(structure))
        count = blocks_to_remove(self.layers, len(structure.blocks))
        if self.heads or self.mlp:  # sizes the model's library cannot describe fail before any work
            first = structure.units(0)
            structure.check_kept_units({"heads": first["heads"].count - round(self.heads * first["heads"].count),
                                        "neurons": first["neurons"].count - round(self.mlp * first["neurons"].count)})
        if count:
            calibration = list(calibration)  # read twice: the blocks' influence, then the units' statistics
            self._remove_blocks(structure, count, calibration)
        if self.heads == 0 and self.mlp == 0:
            return {}
        layers = structure.prunable_layers()
        units = [structure.units(index) for index in range(len(structure.blocks))]
        needs_moments = self.criterion in ("activation", "fluctuation") or self.compensate == "mean"
        moments = input_moments(model, layers, calibration) if needs_moments else {}
        grams = {}
        if self.compensate == "least_squares" or self.criterion == "output":  # the output projections' inputs
            folded = sorted({name for block in units for kind in block.values() for name in kind.columns})
            grams = input_grams(model, {name: layers[name] for name in folded}, calibration)
        block_scores: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
        fractions = {"heads": self.heads, "neurons": self.mlp}
        with progress_bar(f"pruning ({self.registered_name})", len(units)) as advance:
            for index, block in enumerate(units):  # block by block: one block's weight scores in memory at a time
                for kind in KINDS:
                    block_scores[kind].append(self._unit_scores(structure.block_layers(index), moments, grams,
                                                                block[kind], fractions[kind]))
                advance()
        choose = lowest_per_block if self.scope == "block" else lowest_overall
        removed = {kind: choose(block_scores[kind], fractions[kind], f"pruner.{option}={fractions[kind]}", words)
                   for kind, (option, words) in KINDS.items()}
        for index, block in enumerate(units):
            if self.compensate != "none":
                self._compensate(layers, moments, grams, block, {kind: removed[kind][index] for kind in KINDS})
            structure.remove_units(index, heads=removed["heads"][index], neurons=removed["neurons"][index])
        return {}

    def _remove_blocks(self, structure, count: int, calibration) -> None:
        influence = block_influence(structure, calibration)
        removed = least_influential(influence, count)
        log.info("removing blocks %s of %d (lowest influence 1 − cos(input, output): %s)", removed,
                 len(influence), ", ".join(f"{float(influence[i]):.4f}" for i in removed))
        structure.remove_blocks(removed)

    def _unit_scores(self, layers: dict[str, nn.Linear], moments, grams, units: Units,
                     fraction: float) -> torch.Tensor:
        """One score per unit of a block: the lowest `round(fraction · count)` go."""
        if self.criterion == "output":  # the order of a greedy removal on the output projection (one per unit kind)
            (name, columns), = units.columns.items()
            tokens, _, gram = grams[name]  # the greedy stops once it has the units that go (scope=block)
            return removal_order(layers[name].weight, gram, tokens, columns, limit=round(fraction * units.count))
        scores = {name: weight_scores(self.criterion, layers[name].weight, moments.get(name))
                  for name in {*units.rows, *units.columns}}
        return unit_scores(units, scores, rows=self.criterion != "fluctuation")

    def _compensate(self, layers, moments, grams, block: dict[str, Units], removed: dict[str, list[int]]) -> None:
        for kind, units in block.items():
            for name, columns in units.columns.items():
                if not removed[kind]:
                    continue
                layer, gone = layers[name], columns[removed[kind]]
                if self.compensate == "least_squares":
                    kept = torch.ones(layer.in_features, dtype=torch.bool)
                    kept[gone.reshape(-1)] = False
                    tokens, sums, gram = grams[name]
                    to_kept, to_bias = least_squares_fold(layer.weight, gram, sums, tokens, kept,
                                                          with_bias=layer.bias is not None)
                    layer.weight[:, kept] += to_kept.to(layer.weight.dtype)
                    if layer.bias is not None:
                        layer.bias.add_(to_bias.to(layer.bias.dtype))
                    continue
                if layer.bias is None:
                    raise StarfishError(f"pruner.compensate=mean adds to the bias of {name}, which has none: "
                                        "use pruner.compensate=least_squares or none")
                tokens, sums, _ = moments[name]
                layer.bias.add_(mean_contribution(layer.weight, sums / tokens, gone).to(layer.bias.dtype))
