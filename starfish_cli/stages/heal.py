"""The heal step: a copy of the pruned model optimized towards the dense one by the healer, masks
fixed, saved with what it was healed from and how."""

import logging
from typing import Any

from starfish_cli.core.steps import healed_copy
from starfish_cli.artifacts.checkpoint import HEALED_FILE, save_checkpoint
from starfish_cli.healing import Healer
from starfish_cli.healing.sharded_resume import shards_folder
from starfish_cli.runtime.device import measure
from starfish_cli.stages.layout import HEAL_STATE_FILE
from starfish_cli.stages.results import healed_metadata
from starfish_cli.stages.values import Calibration, Context, Healed, Pruned

log = logging.getLogger("starfish")


def heal(context: Context, healer: Healer, pruned: Pruned, calibration: Calibration) -> Healed:
    timing: dict[str, Any] = {}
    state_file = context.folders.record(context.folders.run_dir / HEAL_STATE_FILE)  # removed again on bad input
    context.folders.record(shards_folder(state_file))  # its form under torchrun
    with measure("heal", context.device, timing):
        student, result = healed_copy(pruned.model, context.dense, pruned.masks, healer, calibration.images,
                                      context.device, context.precision,
                                      state_file, bool(context.cfg.compile), context.world)
    log.info("healed with %s: %d steps, final loss %s", healer.registered_name, result.steps,
             f"{result.loss_history[-1]:.5f}" if result.loss_history else "–")
    metadata = healed_metadata(context.cfg, healer, result, pruned.metadata, calibration, timing["heal"])
    if context.world.is_main:
        save_checkpoint(context.folders.record(context.folders.run_dir / HEALED_FILE), student, pruned.masks,
                        metadata)
    return Healed(student, metadata)
