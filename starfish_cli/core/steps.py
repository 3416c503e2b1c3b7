"""Pruning and healing a model in hand: what `starfish prune` and `starfish heal` run on their loaded model and
what the Python API's `prune` and `heal` call (a copy, pruned or healed; the model given stays as it is)."""

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from starfish_cli.data import loader
from starfish_cli.healing import Healer, HealResult
from starfish_cli.models import structure_of
from starfish_cli.pruning import Pruner
from starfish_cli.runtime.distributed import World

CALIBRATION_BATCH = 32  # items per batch when a pruner reads its calibration statistics


def calibration_batches(items: torch.utils.data.Dataset, device: torch.device, batch_size: int = CALIBRATION_BATCH
                        ) -> list[torch.Tensor]:
    """The calibration inputs in batches on the device: what a pruner reads its input statistics from."""
    return [batch[1].to(device) for batch in loader(items, batch_size, device=device)]


def pruned_copy(dense: nn.Module, pruner: Pruner, batches: list[torch.Tensor] | None
                ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of `dense` pruned by `pruner` (on `batches` when it reads calibration inputs), and its masks."""
    model = copy.deepcopy(dense)
    masks = pruner.prune(model, batches if pruner.needs_calibration else None)
    return model, masks


def healed_copy(pruned: nn.Module, teacher: nn.Module, masks: Mapping[str, torch.Tensor], healer: Healer,
                items: torch.utils.data.Dataset, device: torch.device, precision: torch.dtype = torch.float32,
                state_file: Path | None = None, compile_blocks: bool = False,
                world: World | None = None) -> tuple[nn.Module, HealResult]:
    """A copy of `pruned` healed towards `teacher` on the calibration `items`, masks fixed, in eval mode."""
    student = copy.deepcopy(pruned)
    if compile_blocks:
        structure_of(student).compile_blocks()
        structure_of(teacher).compile_blocks()
    result = healer.heal(student, teacher, masks, items, device, precision, state_file, world)
    return student.eval(), result
