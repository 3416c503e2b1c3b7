"""`starfish run` on a causal LM held one decoder layer at a time (`onload`): when it is chosen, and the prune,
heal and eval steps as one pass over the layers (onloading.sequential), handing back the values the report
is assembled from."""

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from starfish_cli.core.steps import CALIBRATION_BATCH, calibration_batches
from starfish_cli.data import loader
from starfish_cli.models import family_of
from starfish_cli.models.causal_lm import model_source
from starfish_cli.onloading.sequential import check_onloadable, prune_heal_evaluate
from starfish_cli.onloading.states import HiddenStates
from starfish_cli.onloading.weights import ShardedWeights
from starfish_cli.pruning.masks import masks_digest
from starfish_cli.runtime import distributed
from starfish_cli.runtime.device import measure
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.runtime.memory import available_host_bytes
from starfish_cli.artifacts.checkpoint import HEALED_FOLDER, MASKS_FOLDER, PRUNED_FOLDER, save_folder_header
from starfish_cli.stages.results import healed_metadata, pruned_metadata, write_calibration_indices
from starfish_cli.stages.settings import plain
from starfish_cli.stages.values import Context, Evaluation, Healed, Inputs, Pruned

log = logging.getLogger("starfish")

SPILL_FOLDER = "hidden_states"  # onload_states on disk: the files the states are mapped from, while the run lasts
WHOLE_MODEL_COPIES = 3  # the whole-model path holds the dense, pruned and healed models at once (fp32)
FP32 = 4


def whole_model_bytes(folder: Path) -> int:
    """What the whole-model path holds, from the checkpoint's tensor shapes (nothing read but the headers)."""
    return WHOLE_MODEL_COPIES * FP32 * ShardedWeights(folder).numel()


def budget_bytes(cfg: DictConfig, device: torch.device) -> int:
    """`memory_budget` in bytes; auto: the device's free memory (a GPU's, or the host's share per process)."""
    budget = cfg.get("memory_budget", "auto")
    if budget != "auto":
        return int(float(budget) * 1e9)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(available_host_bytes() / distributed.processes_per_machine())


def onload_folder(cfg: DictConfig, steps: tuple[str, ...], pruner, healer, device: torch.device) -> Path | None:
    """The model's folder when this run goes layer by layer (`onload=true`, or `auto` and the whole model would
    not fit `memory_budget`); None for the whole-model path."""
    choice = cfg.get("onload", "auto")
    if choice is False:
        return None
    model = plain(cfg.model)
    folder = Path(model_source(str(model.get("name")))) if family_of(model).family == "causal_lm" else None
    reason = why_not_onloaded(cfg, steps, model, folder)
    if reason is not None:
        if choice is True:
            raise StarfishError(f"onload=true (layer-by-layer onloading): {reason}")
        return None
    if choice == "auto":
        needed, budget = whole_model_bytes(folder), budget_bytes(cfg, device)
        end_to_end = healer is not None and healer.changes_weights and getattr(healer, "mode", None) != "blockwise"
        if needed <= budget or end_to_end:  # end-to-end healing that does not fit is refused with its own advice
            return None
        log.info("the whole model needs about %.3g GB here, more than memory_budget=%.3g GB: pruning, healing and "
                 "evaluating one decoder layer at a time", needed / 1e9, budget / 1e9)
    check_onloadable(pruner, healer)
    return folder


def why_not_onloaded(cfg: DictConfig, steps: tuple[str, ...], model: dict[str, Any],
                     folder: Path | None) -> str | None:
    """What keeps this run off the layer-by-layer path, in the words of a refusal; None when nothing does."""
    if folder is None:
        return "it serves causal LMs (model=hf_causal_lm)"
    if tuple(steps) != ("prune", "heal", "eval"):
        return "it runs prune, heal and eval together: use `starfish run`"
    if distributed.launched_world().active:
        return "it runs in one process: launch it without torchrun"
    if not model.get("pretrained", True):
        return "it reads the model's weights: model.pretrained=true"
    if not folder.is_dir():
        return "it reads a local save_pretrained folder: download the model first (hf download NAME --local-dir DIR)"
    if cfg.eval.get("tasks"):
        return "it does not run lm-eval tasks: eval.tasks=[]"
    return None


class StoredMasks(dict):
    """The masks of the masks folder read one at a time, by name (their digest never holds them all)."""

    def __init__(self, folder: Path):
        super().__init__()
        self._weights = ShardedWeights(folder)
        self._names = [name.removesuffix(".weight") for name in self._weights.file_of]

    def __iter__(self):
        return iter(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._weights.read([f"{name}.weight"])[f"{name}.weight"]


def hidden_states(placement: str, spill: Path) -> HiddenStates:
    """`onload_states`: host, disk, or auto (disk once the states would take more than half the free host
    memory: the rest is the layer at hand, its optimizer state and what the OS needs)."""
    if placement == "host":
        return HiddenStates()
    return HiddenStates(spill, host_budget=0 if placement == "disk" else available_host_bytes() // 2)


def run_onloaded(context: Context, inputs: Inputs) -> tuple[Pruned, Healed, Evaluation]:
    """Prune, heal and evaluate in one pass over the layers; the healed model goes to the run folder's healed/."""
    cfg, device, folders = context.cfg, context.device, context.folders
    calibration, eval_data = inputs.calibration, inputs.eval_data
    calibration_tokens = calibration_batches(calibration.images, torch.device("cpu"), CALIBRATION_BATCH)
    evaluation_tokens = [batch[1] for batch in loader(eval_data.images, int(cfg.eval.batch_size))]
    output = folders.record(folders.run_dir / HEALED_FOLDER)
    pruned_output = folders.record(folders.run_dir / PRUNED_FOLDER)  # written when healing changes the weights
    timing: dict[str, Any] = {}
    spill = folders.record(folders.run_dir / SPILL_FOLDER)
    states = hidden_states(cfg.get("onload_states", "auto"), spill)
    try:
        with measure("onload", device, timing):
            run = prune_heal_evaluate(context.onloaded, inputs.pruner, inputs.healer, calibration_tokens,
                                      evaluation_tokens, device, output, context.precision, states, pruned_output)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    sparsity = run.sparsity.summary()
    log.info("pruned with %s layer by layer: %.4f of prunable weights are zero; %d layers, %.1f s each on average, "
             "%.3g GB read, %.3g GB written", inputs.pruner.registered_name, sparsity["prunable"],
             len(run.seconds_per_layer), sum(run.seconds_per_layer) / max(len(run.seconds_per_layer), 1),
             run.bytes_read / 1e9, run.bytes_written / 1e9)
    return step_results(context, inputs, run, sparsity, timing["onload"], states.on_disk)


def step_results(context: Context, inputs: Inputs, run, sparsity: dict[str, Any], timing: dict[str, Any],
                 on_disk: bool) -> tuple[Pruned, Healed, Evaluation]:
    """What the pass made, as the whole-model steps record it: the same metadata (also the headers that make the
    healed and pruned folders checkpoints `load`, `eval` and `export` read), the calibration indices next to the
    pruned model, and the evaluation totals."""
    cfg, folders, calibration, healer = context.cfg, context.folders, inputs.calibration, inputs.healer
    digest = masks_digest(StoredMasks(run.folder / MASKS_FOLDER))  # once: each mask is read from disk for it
    pruned = Pruned(context.dense, {}, pruned_metadata(cfg, inputs.pruner, sparsity, calibration, timing, digest))
    onloading = {"layers": len(run.seconds_per_layer), "seconds_per_layer": run.seconds_per_layer,
                 "bytes_read": run.bytes_read, "bytes_written": run.bytes_written, "folder": run.folder.name,
                 "pruned_folder": run.pruned_folder.name, "hidden_states": "disk" if on_disk else "host"}
    healed = Healed(context.dense, healed_metadata(cfg, healer, run.healing, pruned.metadata, calibration, {},
                                                   onloading=onloading))
    save_folder_header(run.pruned_folder, "prune", digest, pruned.metadata)
    save_folder_header(run.folder, "heal", digest, healed.metadata)
    write_calibration_indices(folders, folders.prune_dir, calibration, int(cfg.seed))
    evaluation = Evaluation({"images": len(inputs.eval_data.images), "models": run.evaluation},
                            inputs.eval_data.source, {}, None)  # timed with the pass (stages.prune)
    return pruned, healed, evaluation
