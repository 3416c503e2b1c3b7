"""Gradual healing (`healer.schedule`): heal at each intermediate sparsity, then at the final masks. The extra
weights an intermediate stage keeps start from the dense values and are zeroed when a later stage prunes them;
the stages share the budget of epochs × batches, `schedule_share` of it equally over the intermediate ones."""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from starfish_cli.healing.loop import Job, Settings, calibration_batches, train
from starfish_cli.healing.schedule import pruned_fraction, split_steps, stage_masks
from starfish_cli.models import structure_of
from starfish_cli.pruning.masks import apply_masks
from starfish_cli.runtime.distributed import World

log = logging.getLogger("starfish")


def heal_gradually(job: Job, settings: Settings, schedule: Sequence[float], share: float, teacher: torch.nn.Module,
                   world: World, device: torch.device, precision: torch.dtype, result, state_file: Path | None) -> None:
    """Run `job` at each stage's masks in turn, adding the steps, losses and stages to `result` (a HealResult)."""
    if state_file is not None and settings.save_every:
        log.info("healer.schedule: gradual healing saves no resumable state (a killed run starts over)")
    stages = stages_of(job, schedule, teacher)
    total = settings.epochs * len(calibration_batches(job.calibration, settings, world, device)[0])
    layers = structure_of(job.model).prunable_layers()
    for number, (stage, steps) in enumerate(zip(stages, split_steps(total, len(schedule), share))):
        apply_masks({name: layers[name] for name in stage}, stage)  # +0.0 where this stage prunes
        sparsity = pruned_fraction(stage)
        log.info("healing stage %d of %d at sparsity %.4f: %d steps", number + 1, len(stages), sparsity, steps)
        result.steps += train(replace(job, masks=stage, steps=steps,
                                      description=f"{job.description}, stage {number + 1}/{len(stages)}"),
                              settings, world, device, precision, result.loss_history)
        result.stages.append({"sparsity": round(sparsity, 4), "steps": steps})


def stages_of(job: Job, schedule: Sequence[float], teacher: torch.nn.Module) -> list[Mapping[str, torch.Tensor]]:
    """Every stage's masks (the last: the job's), the first stage's extra weights restored to the dense values
    (the pruner's kept values stay)."""
    layers = structure_of(job.model).prunable_layers()
    dense = structure_of(teacher).prunable_layers()
    by_layer = {name: stage_masks(mask, dense[name].weight.detach().to(mask.device), schedule)
                for name, mask in job.masks.items()}
    stages = [{name: layer_masks[number] for name, layer_masks in by_layer.items()}
              for number in range(len(schedule) + 1)]
    with torch.no_grad():
        for name, mask in stages[0].items():
            weight = layers[name].weight
            restored = (mask & ~job.masks[name].bool()).to(weight.device)
            weight.copy_(torch.where(restored, dense[name].weight.to(weight.device, weight.dtype), weight))
    return stages
