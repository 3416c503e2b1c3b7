"""A stage's inputs, validated and loaded before any step runs: the device, the pruner and healer,
the checkpoints an earlier stage wrote, the dense model, and the calibration and evaluation items."""

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn

from starfish_cli.artifacts.checkpoint import PRUNED_FILE, Checkpoint, load_checkpoint, read_metadata, restore
from starfish_cli.data import DATASETS
from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.evaluation.cache import SweepCache
from starfish_cli.evaluation.zero_shot import ZeroShot
from starfish_cli.healing import HEALERS
from starfish_cli.healing.base import GradientHealer
from starfish_cli.healing.footprint import check_fits, end_to_end_footprint, tokens_per_item
from starfish_cli.models import build_model, structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime import distributed
from starfish_cli.runtime.device import measure, resolve_device, resolve_precision, seed_everything
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.onloading.weights import skeleton
from starfish_cli.stages.layout import INDICES_FILE, RunFolders, healed_checkpoint, pruned_checkpoint
from starfish_cli.stages.onloaded import budget_bytes, onload_folder
from starfish_cli.stages.settings import calibration_sampler, check_settings, eval_workers, plain, pruning_config
from starfish_cli.stages.values import Calibration, Context, EvaluationData, Healed, Inputs, Pruned

log = logging.getLogger("starfish")


def prepare(cfg: DictConfig, folders: RunFolders, steps: tuple[str, ...],
            sweep_cache: SweepCache | None = None) -> tuple[Context, Inputs]:
    """Check everything, then load what the steps read; bad input is a StarfishError before anything is written."""
    check_settings(cfg)
    seed = int(cfg.seed)
    seed_everything(seed)
    pruner = PRUNERS.build(plain(cfg.pruner), seed=seed) if "prune" in steps else None
    healer = HEALERS.build(plain(cfg.healer), seed=seed) if "heal" in steps else None
    if cfg.compile and healer is not None and {"attn", "mlp"} & set(healer.student_states):
        # hooks inside a compiled block change its guards on every step: it would recompile each time
        raise StarfishError("compile=true compiles whole blocks, and healer.states attn/mlp read inside them: "
                            "use compile=false, or healer.states=[blocks] / [final_norm]")
    sampler = calibration_sampler(cfg)
    workers = eval_workers(cfg.eval.num_workers)
    zero_shot = zero_shot_of(cfg) if "eval" in steps else None  # task names and offline tasks' data, before any model
    # checkpoints first: a missing or foreign file is found before any model or data is loaded
    pruned_path = Path(cfg.pruned) if cfg.pruned else pruned_checkpoint(folders)
    pruned_saved = load_checkpoint(pruned_path, "prune") if "prune" not in steps else None
    healed_path = Path(cfg.healed) if cfg.healed else healed_checkpoint(folders.run_dir)
    healed_saved = load_checkpoint(healed_path, "heal") if "eval" in steps and "heal" not in steps else None
    data = DATASETS.build(plain(cfg.data))
    context = make_context(cfg, folders, steps, pruner, healer, sweep_cache)
    check_pairing(structure_of(context.dense), data)

    if "prune" in steps:
        pruned = reusable_pruning(context) if cfg.skip_finished and context.onloaded is None else None
    else:
        pruned = pruned_from(context, pruned_saved, pruned_path)
    healed = healed_from(context, healed_saved, healed_path, pruned) if healed_saved is not None else None
    calibration = eval_data = None
    if "prune" in steps or "heal" in steps:
        labels_for = healer.registered_name if healer and healer.labels_used else None
        calibration = calibration_of(context, data, sampler, labels_for)
    if healer is not None and context.onloaded is None:
        check_memory(context, healer, calibration.images)
    if "eval" in steps:
        structure = structure_of(context.dense)
        windows = {"seq_len": cfg.eval.get("seq_len")} if structure.modality == "text" else {}
        items, finish = data.evaluation_items(cfg.eval.max_images, **structure.preprocessing(), **windows)
        eval_data = EvaluationData(items, finish, data.describe(data.eval_split), zero_shot)
    return context, Inputs(pruner, healer, pruned, healed, calibration, eval_data, workers)


def zero_shot_of(cfg: DictConfig) -> ZeroShot | None:
    """The lm-eval tasks of `eval.tasks`, their names checked (lm-eval indexes its tasks: a few seconds)."""
    if not cfg.eval.get("tasks"):
        return None
    zero_shot = ZeroShot(list(cfg.eval.tasks), cfg.eval.include_path, cfg.eval.task_limit, int(cfg.eval.num_fewshot),
                         int(cfg.eval.batch_size))
    zero_shot.check()
    return zero_shot


def check_memory(context: Context, healer, calibration) -> None:
    """End-to-end gradient healing must fit `memory_budget` per device (replicated, or sharded by FSDP2), with
    the activations of a batch of calibration items as long as they are."""
    if not isinstance(healer, GradientHealer) or getattr(healer, "mode", "end_to_end") != "end_to_end":
        return
    parameters = dict(context.dense.named_parameters())
    trained = sum(parameters[name].numel() for name in healer.trainable_names(context.dense) if name in parameters)
    footprint = end_to_end_footprint(context.dense, trained, int(healer.batch_size),
                                     tokens_per_item(context.dense, calibration))
    sharded = context.world.active and context.world.strategy == "fsdp"
    check_fits(footprint, memory_budget(context), context.world.size if sharded else 1, str(context.cfg.model.name))


def memory_budget(context: Context) -> int:
    return budget_bytes(context.cfg, context.device)


def check_pairing(structure, data) -> None:
    """The data must be of the kind the model reads (images for a ViT, text for a causal LM)."""
    if data.modality != structure.modality:
        fitting = [name for name in DATASETS.names() if DATASETS.get(name).modality == structure.modality]
        raise StarfishError(f"data={data.registered_name} holds {data.modality}, and this {structure.family} model "
                            f"reads {structure.modality}: choose data={', '.join(fitting)}")


def make_context(cfg: DictConfig, folders: RunFolders, steps: tuple[str, ...] = (), pruner=None,
                 healer=None, sweep_cache: SweepCache | None = None) -> Context:
    """The process group (under torchrun), the device and precision, and the dense model on the device (or, for
    layer-by-layer onloading, its skeleton: weights on the meta device, read one layer at a time later)."""
    world = distributed.setup(str(cfg.device), str(cfg.dist_backend), str(cfg.get("dist_strategy", "ddp")))
    device = resolve_device(str(cfg.device))
    if world.active and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    precision = resolve_precision(str(cfg.precision), device)
    onloaded = onload_folder(cfg, steps, pruner, healer, device)
    dense = skeleton(onloaded) if onloaded else build_model(plain(cfg.model)).to(device)
    # frozen: nothing trains the reference, and with compile=true the models evaluated after healing (whose
    # parameters end frozen) then share its compiled graphs instead of recompiling on requires_grad
    dense.requires_grad_(False)
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    return Context(cfg, folders, world, device, precision, dense, sweep_cache if sweep else None, onloaded=onloaded)


def calibration_of(context: Context, data, sampler: CalibrationSampler, labels_for: str | None) -> Calibration:
    """The calibration items the family makes from the data (timed), and what the report says of them."""
    timing: dict[str, Any] = {}
    with measure("calibration", context.device, timing):
        items, indices, described = data.calibration_items(sampler, int(context.cfg.seed), labels_for,
                                                           **structure_of(context.dense).preprocessing())
    info = {"count": len(indices), "source": data.describe(data.calib_split), "balanced": described["balanced"],
            **{key: value for key, value in described.items() if key != "balanced"}, "indices_file": INDICES_FILE}
    return Calibration(items, indices, info, timing["calibration"])


def _student(context: Context, checkpoint: Checkpoint, path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    made_for = checkpoint.metadata.get("model", {}).get("name")
    if made_for != context.cfg.model.name:
        raise StarfishError(f"{path} was made for model {made_for!r}, not {context.cfg.model.name!r}: "
                            f"set model.name={made_for} or re-prune")
    model = copy.deepcopy(context.dense)
    structure_of(model).resize(checkpoint.metadata.get("structure") or {})  # structurally pruned: its sizes first
    masks = restore(model, checkpoint, path)  # a different architecture is a clear error
    return model.to(context.device).eval(), masks


def pruned_from(context: Context, checkpoint: Checkpoint, path: Path) -> Pruned:
    model, masks = _student(context, checkpoint, path)
    return Pruned(model, masks, checkpoint.metadata)


def reusable_pruning(context: Context) -> Pruned | None:
    """The pruned checkpoint already in the pruning folder, if the same config made it."""
    path = context.folders.prune_dir / PRUNED_FILE
    metadata = read_metadata(path)
    if metadata is None or metadata.get("pruning_config") != pruning_config(context.cfg):
        return None
    pruned = pruned_from(context, load_checkpoint(path, "prune"), path)
    log.info("reusing %s: pruned earlier with the same model, data, calibration, pruner and seed "
             "(skip_finished=false prunes again)", path)
    return Pruned(pruned.model, pruned.masks, pruned.metadata, reused=True)


def healed_from(context: Context, checkpoint: Checkpoint, path: Path, pruned: Pruned) -> Healed:
    if checkpoint.metadata.get("pruned_masks_digest") != pruned.metadata["masks_digest"]:
        raise StarfishError(f"{path} was healed from a different pruned checkpoint: rerun `starfish heal`")
    model, _ = _student(context, checkpoint, path)
    metadata = dict(checkpoint.metadata)
    healer_class = HEALERS.get(metadata["healer"]["name"])  # checkpoints of version 0.1.0 did not record these
    metadata.setdefault("labels_used", healer_class.labels_used)
    metadata.setdefault("changes_weights", healer_class.changes_weights)
    return Healed(model, metadata)
