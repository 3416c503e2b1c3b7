"""The prune step: the dense model → a pruned copy with its masks, measured, saved with the
calibration indices it was pruned on."""

import logging
from typing import Any

from starfish_cli.core.steps import CALIBRATION_BATCH, calibration_batches, pruned_copy
from starfish_cli.artifacts.checkpoint import PRUNED_FILE, save_checkpoint
from starfish_cli.pruning.masks import masks_digest
from starfish_cli.models import structure_of
from starfish_cli.pruning import Pruner
from starfish_cli.pruning.masks import measure_sparsity
from starfish_cli.runtime import distributed
from starfish_cli.runtime.device import measure
from starfish_cli.stages.results import pruned_metadata, write_calibration_indices
from starfish_cli.stages.values import Calibration, Context, Pruned

log = logging.getLogger("starfish")


def prune(context: Context, pruner: Pruner, calibration: Calibration) -> Pruned:
    cfg, device = context.cfg, context.device
    # under torchrun each rank reads its share of the batches: the pruners sum their statistics over ranks
    batches = calibration_batches(distributed.shard_batches(calibration.images, CALIBRATION_BATCH), device,
                                  CALIBRATION_BATCH)
    timing: dict[str, Any] = {}
    with measure("prune", device, timing):
        model, masks = pruned_copy(context.dense, pruner, batches)
        # one set of masks and weights for every rank: rank 0's
        distributed.broadcast_from_main([*model.state_dict().values(), *masks.values()])
    structure = structure_of(model)
    sizes = structure.block_sizes()
    if sizes == structure_of(context.dense).block_sizes():
        sizes = None  # no whole unit was removed
    sparsity = measure_sparsity(model, structure.prunable_layers(), context.dense, structure.block_weights())
    blocks = sparsity["block_weights"]
    log.info("pruned with %s: %.4f of prunable weights are zero or removed (the blocks' weight matrices: %.4f "
             "prunable, %.4f zero); %d of %d parameters remain", pruner.registered_name, sparsity["prunable"],
             blocks["prunable"], blocks["zero"], sparsity["remaining_parameters"], sparsity["total_parameters"])
    metadata = pruned_metadata(cfg, pruner, sparsity, calibration, timing["prune"],
                               masks_digest(masks, model if sizes else None), sizes)
    if context.world.is_main:
        folders = context.folders
        save_checkpoint(folders.record(folders.prune_dir / PRUNED_FILE), model, masks, metadata)
        write_calibration_indices(folders, folders.prune_dir, calibration, int(cfg.seed))
    return Pruned(model, masks, metadata)
