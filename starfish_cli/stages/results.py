"""What a prune and a heal step record, written by one function each whichever pipeline ran them (the whole model,
or one decoder layer at a time): the pruned and healed metadata (a checkpoint's header, report.json's source) and
the calibration indices."""

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from starfish_cli.healing import Healer, HealResult
from starfish_cli.pruning import Pruner
from starfish_cli.runtime.atomic import write_text_atomically
from starfish_cli.stages.layout import INDICES_FILE, RunFolders
from starfish_cli.stages.settings import plain, pruning_config
from starfish_cli.stages.values import Calibration


def pruned_metadata(cfg: DictConfig, pruner: Pruner, sparsity: dict[str, Any], calibration: Calibration,
                    timing: dict[str, Any], masks_digest: str, structure: dict[str, Any] | None = None) -> dict:
    """Plain JSON values, equal to what a reload gives; `structure`: the kept sizes of a structurally pruned model."""
    return json.loads(json.dumps({
        "model": plain(cfg.model), "pruner": pruner.describe(), "sparsity": sparsity,
        **({"structure": structure} if structure else {}),
        "calibration": calibration.info, "seed": int(cfg.seed), "pruning_config": pruning_config(cfg),
        "timing": timing, "masks_digest": masks_digest}))


def healed_metadata(cfg: DictConfig, healer: Healer, result: HealResult, pruned: dict[str, Any],
                    calibration: Calibration, timing: dict[str, Any], **extra: Any) -> dict:
    """`pruned`: the pruned model's metadata; `extra`: what the pipeline adds (layer by layer: `onloading`)."""
    healing = {"steps": result.steps, "trained_parameters": len(result.trained_parameters),
               "final_loss": result.loss_history[-1] if result.loss_history else None,
               "loss_history": result.loss_history,
               **({"stages": result.stages} if result.stages else {}),  # gradual healing's sparsity and steps
               **({"holdout": result.holdout} if result.holdout else {})}  # each loop's held-out losses
    return json.loads(json.dumps({
        "model": plain(cfg.model), "seed": int(cfg.seed), "pruner": pruned["pruner"], "sparsity": pruned["sparsity"],
        **({"structure": pruned["structure"]} if "structure" in pruned else {}),
        "calibration": {**calibration.info, "labels_used": healer.labels_used},
        "healer": healer.describe(), "labels_used": healer.labels_used, "changes_weights": healer.changes_weights,
        "pruned_masks_digest": pruned["masks_digest"], "healing": healing, "timing": timing, **extra}))


def write_calibration_indices(folders: RunFolders, folder: Path, calibration: Calibration, seed: int) -> None:
    """The calibration items a pruning read, next to the pruned model (a failed invocation removes the file)."""
    text = json.dumps({"source": calibration.info["source"], "seed": seed, "indices": calibration.indices}) + "\n"
    write_text_atomically(folders.record(Path(folder) / INDICES_FILE), text)
