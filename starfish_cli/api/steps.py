"""Pruning, healing and evaluating a model in hand from a notebook (`prune`, `heal`, `evaluate`), on the core
steps the command line's stages run too (`starfish_cli.core`)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from starfish_cli.api.items import calibration_items, evaluation_items
from starfish_cli.core.steps import calibration_batches, healed_copy, pruned_copy
from starfish_cli.evaluation import compare
from starfish_cli.healing import HEALERS, Healer, HealResult
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS, Pruner
from starfish_cli.pruning.masks import measure_sparsity
from starfish_cli.registry import Registry
from starfish_cli.runtime.errors import StarfishError


@dataclass
class Pruning:
    """`prune`'s result: the pruned copy, its keep-masks by layer name, and its measured sparsity."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    sparsity: dict[str, Any]  # prunable (fraction of prunable weights zero or removed), per layer, parameters
    pruner: Pruner


@dataclass
class Healing:
    """`heal`'s result: the healed copy, its optimizer steps and loss per step."""

    model: nn.Module
    steps: int
    loss_history: list[float]
    healer: Healer
    result: HealResult  # also the trained parameters' names and a gradual heal's stages


def prune(model: nn.Module, pruner: str | Pruner = "wanda", calibration: Any = None,
          sparsity: float | Mapping[str, float] | None = None, *, seed: int = 0, device: str | None = None,
          batch_size: int = 32, **options: Any) -> Pruning:
    """A pruned copy of `model` (a timm ViT or a transformers causal LM; it stays as it is).

    `pruner`: a registered name (`wanda`, `magnitude`, `sparsegpt`, `structured`, …) with its options as
    keyword arguments, checked as `pruner.KEY=…` is on the command line, or a `Pruner` instance.
    `sparsity`: the fraction removed (None: the pruner's default, 0.5; `structured` takes `heads`/`mlp`).
    `calibration`: the model's inputs for pruners that read them (wanda, sparsegpt, …): a tensor, or a
    Dataset/DataLoader of `(index, input)` items (see `starfish_cli.api.items`).
    """
    options = {**({"sparsity": sparsity} if sparsity is not None else {}), **options}
    chosen = _component(PRUNERS, Pruner, pruner, options, seed)
    batches = None
    if chosen.needs_calibration:
        if calibration is None:
            raise StarfishError(f"pruner {chosen.registered_name!r} reads calibration inputs: give calibration=…")
        batches = calibration_batches(calibration_items(calibration, model), _device(model, device), batch_size)
    pruned, masks = pruned_copy(model, chosen, batches)
    structure = structure_of(pruned)
    measured = measure_sparsity(pruned, structure.prunable_layers(), model, structure.block_weights())
    return Pruning(pruned, masks, measured, chosen)


def heal(student: nn.Module, teacher: nn.Module, masks: Mapping[str, torch.Tensor], calibration: Any,
         healer: str | Healer = "starfish", *, seed: int = 0, device: str | None = None,
         precision: torch.dtype = torch.float32, **options: Any) -> Healing:
    """A healed copy of the pruned `student` (which stays as it is), aligned with its dense `teacher`, `masks`
    fixed. `healer`: a registered name (`starfish`, `kd`, `norm`, `supervised`, `none`) with its options as
    keyword arguments (`epochs=1`, `lr=…`), or a `Healer` instance. `calibration`: as for `prune`, with
    labels (`(inputs, labels)` or `(index, input, label)` items) for a healer that reads them."""
    chosen = _component(HEALERS, Healer, healer, options, seed)
    items = calibration_items(calibration, student, labels=chosen.labels_used)
    model, result = healed_copy(student, teacher, masks, chosen, items, _device(student, device), precision)
    return Healing(model, result.steps, result.loss_history, chosen, result)


def evaluate(models: Mapping[str, nn.Module], data: Any, *, reference: str | None = None, device: str | None = None,
             batch_size: int = 256, precision: torch.dtype = torch.float32) -> dict[str, Any]:
    """Every model on the same batches of `data`: `(images, labels)` tensors, token ids N×L (a causal LM's
    targets are its next tokens), or a Dataset/DataLoader of `(index, input, target)` items.

    Returns `images` (items evaluated) and per model the family's metrics (classifiers: top1, top5,
    agreement in percent; causal LMs: perplexity, top1, agreement, tokens), `block_cosine` against
    `reference` (default: the first model) and `images_per_second`.
    """
    if not models:
        raise StarfishError("no models to evaluate: give a dict of name → model")
    reference = next(iter(models)) if reference is None else reference
    if reference not in models:
        raise StarfishError(f"reference {reference!r} is not among the models: choose one of {', '.join(models)}")
    items = evaluation_items(data, models[reference])
    return compare.evaluate(models, items, _device(models[reference], device), batch_size=batch_size,
                            reference=reference, precision=precision)


def _component(registry: Registry, base: type, given: Any, options: Mapping[str, Any], seed: int):
    """A pruner or healer from a name and options (checked as a config node is), or the instance given."""
    if isinstance(given, str):
        return registry.build({"name": given, **options}, seed=seed)
    if not isinstance(given, base):
        raise StarfishError(f"{registry.kind}={given!r}: give a name ({', '.join(registry.names())}) "
                            f"or a {base.__name__} instance")
    if options:
        raise StarfishError(f"{', '.join(options)}: options go with a {registry.kind} name; "
                            f"a {type(given).__name__} instance has its own")
    return given


def _device(model: nn.Module, device: str | None) -> torch.device:
    """Where the work runs: `device`, else where the model's weights are."""
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device
