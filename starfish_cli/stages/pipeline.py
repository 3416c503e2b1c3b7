"""The stage pipeline: validated inputs → prune → heal → evaluate → report.

Every input (config, data, checkpoints) is checked before anything is written, so bad input
leaves no half-written run folder behind. Each step returns an explicit value (`Pruned`,
`Healed`, `Evaluation`) that the next step takes as an argument.
"""

import copy
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn

import starfish_cli
from starfish_cli import distributed
from starfish_cli.atomic import write_text_atomically
from starfish_cli.calibration import CalibrationSampler
from starfish_cli.checkpoint import load_checkpoint, masks_digest, read_metadata, restore, save_checkpoint
from starfish_cli.data import DATASETS, loader
from starfish_cli.errors import StarfishError
from starfish_cli.evaluation import evaluate
from starfish_cli.export import check_options as check_export_options
from starfish_cli.families import build_model, model_builder, structure_of
from starfish_cli.healing import HEALERS, Healer
from starfish_cli.pruning import PRUNERS, Pruner
from starfish_cli.pruning.masks import measure_sparsity
from starfish_cli.registry import check_arguments, check_types
from starfish_cli.report import print_summary, write_report
from starfish_cli.runtime import compile_blocks, measure, resolve_device, resolve_precision, seed_everything
from starfish_cli.speed import measure_speed
from starfish_cli.stages.layout import (
    CONFIG_FILE, HEAL_STATE_FILE, HEALED_FILE, INDICES_FILE, PRUNED_FILE, RunFolders, finished, has_results,
)

log = logging.getLogger("starfish")

RUN = ("prune", "heal", "eval")
PRUNING_CONFIG = ("model", "data", "calib", "pruner", "seed")  # everything that determines a pruned checkpoint


@dataclass(frozen=True)
class Context:
    """What every step of one invocation shares."""

    cfg: DictConfig
    folders: RunFolders
    world: distributed.World
    device: torch.device
    precision: torch.dtype
    dense: nn.Module
    sweep: bool  # one of several runs in this process (Hydra multirun): worth caching what they share


@dataclass(frozen=True)
class Calibration:
    images: torch.utils.data.Dataset  # (index, image) items, or (index, image, label) for a healer that uses labels
    indices: list[int]
    info: dict[str, Any]  # count, source, balanced, indices_file
    timing: dict[str, Any]  # sampling, decoding and preprocessing the images


@dataclass(frozen=True)
class Pruned:
    model: nn.Module
    masks: dict[str, torch.Tensor]
    metadata: dict[str, Any]  # model, pruner, sparsity, calibration, seed, pruning_config, timing, masks_digest
    reused: bool = False  # an earlier invocation's checkpoint of the same pruning config


@dataclass(frozen=True)
class Healed:
    model: nn.Module
    metadata: dict[str, Any]  # healer, labels_used, changes_weights, healing, calibration, timing, …


@dataclass(frozen=True)
class Evaluation:
    results: dict[str, Any]  # `evaluate()`'s images and per-model results
    split: str
    timing: dict[str, Any]
    speed: dict[str, Any] | None  # `measure_speed()`'s images/s, MACs and parameters (eval.speed)


@dataclass(frozen=True)
class EvaluationData:
    images: torch.utils.data.Dataset  # (index, pixels, label) items
    finish: Any  # batch of pixels → the models' inputs, on the device (None: items are inputs already)
    source: str


@dataclass(frozen=True)
class Inputs:
    """Everything a stage's steps read, validated before any of them runs."""

    pruner: Pruner | None
    healer: Healer | None
    pruned: Pruned | None  # loaded from disk (heal/eval) or an earlier identical pruning (run/prune)
    healed: Healed | None  # loaded from disk (eval)
    calibration: Calibration | None
    eval_data: EvaluationData | None
    eval_workers: int


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def pruning_config(cfg: DictConfig) -> dict[str, Any]:
    return {key: plain(cfg[key]) for key in PRUNING_CONFIG}


# ---- validation: everything that can be wrong with the input, before anything is written
def check_settings(cfg: DictConfig) -> None:
    """The top-level keys and `eval.*`: one line for a value of the wrong kind or range."""
    def whole(value, minimum: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    problems = {
        "seed": (whole(cfg.seed, 0), "a whole number ≥ 0"),
        "eval.batch_size": (whole(cfg.eval.batch_size, 1), "a whole number ≥ 1"),
        "eval.max_images": (cfg.eval.max_images is None or whole(cfg.eval.max_images, 1), "a whole number ≥ 1 or null"),
        "skip_finished": (isinstance(cfg.skip_finished, bool), "true or false"),
        "compile": (isinstance(cfg.compile, bool), "true or false"),
        "eval.speed": (isinstance(cfg.eval.speed, bool), "true or false"),
    }
    for key, (fine, allowed) in problems.items():
        if not fine:
            raise StarfishError(f"{key}={OmegaConf.select(cfg, key)!r} must be {allowed}")
    check_types(model_builder(plain(cfg.model)), plain(cfg.model), prefix="model")
    check_arguments(CalibrationSampler, plain(cfg.calib), "calib", prefix="calib")
    check_types(CalibrationSampler, plain(cfg.calib), prefix="calib")
    check_export_options(cfg.export.format, cfg.export.dtype)


def prepare(cfg: DictConfig, folders: RunFolders, steps: tuple[str, ...]) -> tuple[Context, Inputs]:
    check_settings(cfg)
    seed = int(cfg.seed)
    seed_everything(seed)
    world = distributed.setup(str(cfg.device), str(cfg.dist_backend))
    device = resolve_device(str(cfg.device))
    if world.active and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    precision = resolve_precision(str(cfg.precision), device)
    pruner = PRUNERS.build(plain(cfg.pruner), seed=seed) if "prune" in steps else None
    healer = HEALERS.build(plain(cfg.healer), seed=seed) if "heal" in steps else None
    if cfg.compile and healer is not None and {"attn", "mlp"} & set(healer.student_states):
        # hooks inside a compiled block change its guards on every step: it would recompile each time
        raise StarfishError("compile=true compiles whole blocks, and healer.states attn/mlp read inside them: "
                            "use compile=false, or healer.states=[blocks] / [final_norm]")
    sampler = CalibrationSampler(**plain(cfg.calib))
    workers = eval_workers(cfg.eval.num_workers)
    # checkpoints first: a missing or foreign file is found before any model or data is loaded
    pruned_path = Path(cfg.pruned) if cfg.pruned else folders.prune_dir / PRUNED_FILE
    pruned_checkpoint = load_checkpoint(pruned_path, "prune") if "prune" not in steps else None
    healed_path = Path(cfg.healed) if cfg.healed else folders.run_dir / HEALED_FILE
    healed_checkpoint = load_checkpoint(healed_path, "heal") if "eval" in steps and "heal" not in steps else None
    data = DATASETS.build(plain(cfg.data))
    dense = build_model(**plain(cfg.model)).to(device)
    context = Context(cfg, folders, world, device, precision, dense,
                      sweep=HydraConfig.get().mode == RunMode.MULTIRUN)
    structure = structure_of(dense)  # the family: what the model is calibrated and evaluated on

    pruned = healed = calibration = eval_data = None
    if "prune" in steps:
        pruned = reusable_pruning(context) if cfg.skip_finished else None
    else:
        pruned = pruned_from(context, pruned_checkpoint, pruned_path)
    if healed_checkpoint is not None:
        healed = healed_from(context, healed_checkpoint, healed_path, pruned)
    if "prune" in steps or "heal" in steps:
        labels_for = healer.registered_name if healer and healer.labels_used else None
        timing: dict[str, Any] = {}
        with measure("calibration", device, timing):
            items, indices, described = structure.calibration_items(data, sampler, seed, labels_for)
        info = {"count": len(indices), "source": data.describe(data.calib_split), "balanced": described["balanced"],
                **{key: value for key, value in described.items() if key != "balanced"}, "indices_file": INDICES_FILE}
        calibration = Calibration(items, indices, info, timing["calibration"])
    if "eval" in steps:
        items, finish = structure.evaluation_items(data, cfg.eval.max_images)
        eval_data = EvaluationData(items, finish, data.describe(data.eval_split))
    return context, Inputs(pruner, healer, pruned, healed, calibration, eval_data, workers)


def _student(context: Context, checkpoint, path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    made_for = checkpoint.metadata.get("model", {}).get("name")
    if made_for != context.cfg.model.name:
        raise StarfishError(f"{path} was made for model {made_for!r}, not {context.cfg.model.name!r}: "
                            f"set model.name={made_for} or re-prune")
    model = copy.deepcopy(context.dense)
    structure_of(model).resize(checkpoint.metadata.get("structure") or {})  # structurally pruned: its sizes first
    masks = restore(model, checkpoint, path)  # a different architecture is a clear error
    return model.to(context.device).eval(), masks


def pruned_from(context: Context, checkpoint, path: Path) -> Pruned:
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


def healed_from(context: Context, checkpoint, path: Path, pruned: Pruned) -> Healed:
    if checkpoint.metadata.get("pruned_masks_digest") != pruned.metadata["masks_digest"]:
        raise StarfishError(f"{path} was healed from a different pruned checkpoint: rerun `starfish heal`")
    model, _ = _student(context, checkpoint, path)
    metadata = dict(checkpoint.metadata)
    healer_class = HEALERS.get(metadata["healer"]["name"])  # checkpoints of version 0.1.0 did not record these
    metadata.setdefault("labels_used", healer_class.labels_used)
    metadata.setdefault("changes_weights", healer_class.changes_weights)
    return Healed(model, metadata)


# ---- the steps
def prune(context: Context, pruner: Pruner, calibration: Calibration) -> Pruned:
    cfg, device = context.cfg, context.device
    batches = [batch[1].to(device) for batch in loader(calibration.images, 32, device=device)]
    timing: dict[str, Any] = {}
    with measure("prune", device, timing):
        model = copy.deepcopy(context.dense)
        masks = pruner.prune(model, batches if pruner.needs_calibration else None)
        # one set of masks and weights for every rank: rank 0's
        distributed.broadcast_from_main([*model.state_dict().values(), *masks.values()])
    structure = structure_of(model)
    sizes = structure.current_structure()  # None unless whole units were removed
    sparsity = measure_sparsity(model, structure.prunable_layers(), context.dense)
    log.info("pruned with %s: %.4f of prunable weights are zero or removed; %d of %d parameters remain",
             pruner.registered_name, sparsity["prunable"], sparsity["remaining_parameters"],
             sparsity["total_parameters"])
    metadata = json.loads(json.dumps({  # plain JSON values: equal to what a reload gives
        "model": plain(cfg.model), "pruner": pruner.describe(), "sparsity": sparsity,
        **({"structure": sizes} if sizes else {}),
        "calibration": calibration.info, "seed": int(cfg.seed), "pruning_config": pruning_config(cfg),
        "timing": timing["prune"], "masks_digest": masks_digest(masks, model if sizes else None),
    }))
    if context.world.is_main:
        folders = context.folders
        save_checkpoint(folders.record(folders.prune_dir / PRUNED_FILE), model, masks, metadata)
        text = json.dumps({"source": calibration.info["source"], "seed": int(cfg.seed),
                           "indices": calibration.indices}) + "\n"
        write_text_atomically(folders.record(folders.prune_dir / INDICES_FILE), text)
    return Pruned(model, masks, metadata)


def heal(context: Context, healer: Healer, pruned: Pruned, calibration: Calibration) -> Healed:
    student = copy.deepcopy(pruned.model)
    if context.cfg.compile:
        compile_blocks(student)
        compile_blocks(context.dense)
    timing: dict[str, Any] = {}
    state_file = context.folders.record(context.folders.run_dir / HEAL_STATE_FILE)  # removed again on bad input
    with measure("heal", context.device, timing):
        result = healer.heal(student, context.dense, pruned.masks, calibration.images, context.device,
                             context.precision, state_file if context.world.is_main else None)
    student.eval()
    log.info("healed with %s: %d steps, final loss %s", healer.registered_name, result.steps,
             f"{result.loss_history[-1]:.5f}" if result.loss_history else "–")
    metadata = json.loads(json.dumps({
        "model": plain(context.cfg.model), "seed": int(context.cfg.seed),
        "pruner": pruned.metadata["pruner"], "sparsity": pruned.metadata["sparsity"],
        **({"structure": pruned.metadata["structure"]} if "structure" in pruned.metadata else {}),
        "calibration": {**calibration.info, "labels_used": healer.labels_used},
        "healer": healer.describe(), "labels_used": healer.labels_used, "changes_weights": healer.changes_weights,
        "pruned_masks_digest": pruned.metadata["masks_digest"],
        "healing": {
            "steps": result.steps,
            "trained_parameters": len(result.trained_parameters),
            "final_loss": result.loss_history[-1] if result.loss_history else None,
            "loss_history": result.loss_history,
            **({"stages": result.stages} if result.stages else {}),  # gradual healing's sparsity and steps per stage
        },
        "timing": timing["heal"],
    }))
    if context.world.is_main:
        save_checkpoint(context.folders.record(context.folders.run_dir / HEALED_FILE), student, pruned.masks,
                        metadata)
    return Healed(student, metadata)


def evaluate_models(context: Context, pruned: Pruned, healed: Healed, data: EvaluationData,
                    workers: int) -> Evaluation:
    cfg = context.cfg
    models = {"dense": context.dense, "pruned": pruned.model, "healed": healed.model}
    if cfg.compile:
        for model in models.values():
            compile_blocks(model)
    # a sweep re-evaluates the same dense model, and each pruned checkpoint under every healer
    size = len(data.images) if hasattr(data.images, "__len__") else None
    cache_key = json.dumps([plain(cfg.model), plain(cfg.data), cfg.eval.max_images, size,
                            int(cfg.eval.batch_size), str(context.precision), str(context.device)], sort_keys=True)
    pruned_key = cache_key + pruned.metadata["masks_digest"] + json.dumps(pruned.metadata["pruner"])
    cache_keys = {"dense": cache_key, "pruned": pruned_key}
    if not healed.metadata["changes_weights"]:
        cache_keys["healed"] = pruned_key
    timing: dict[str, Any] = {}
    with measure("eval", context.device, timing):
        results = evaluate(models, data.images, context.device, batch_size=int(cfg.eval.batch_size),
                           num_workers=workers, precision=context.precision,
                           cache_keys=cache_keys, record_reference=context.sweep, finish=data.finish)
    speed = measure_models_speed(context, models, data, pruned) if cfg.eval.speed else None
    return Evaluation(results, data.source, timing["eval"], speed)


def measure_models_speed(context: Context, models: dict[str, nn.Module], data: EvaluationData,
                         pruned: Pruned) -> dict[str, Any]:
    """Images/s at batch 1 and at the batch the evaluation ran (the eval batch size, or every image when
    there are fewer), on the first evaluation images; 2:4 kernels too for a 2:4 model on CUDA."""
    batch_size = int(context.cfg.eval.batch_size)
    _indices, pixels, _labels = next(iter(loader(data.images, batch_size)))
    images = data.finish(pixels) if data.finish is not None else pixels
    return measure_speed(models, images, [1, len(images)], context.device, context.precision,
                         semi_structured=pruned.metadata["pruner"].get("pattern") == "2:4")


def eval_workers(setting) -> int:
    """`auto`: one loader process per spare core (at most 8), so decoding overlaps the forward passes."""
    if str(setting) == "auto":
        return min(8, max(0, (os.cpu_count() or 1) - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise StarfishError(f"eval.num_workers={setting!r}: give auto or a whole number ≥ 0")
    return setting


# ---- the report
def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(starfish_cli.__file__).parent,
                                capture_output=True, text=True, timeout=5)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(context: Context) -> dict[str, Any]:
    device, precision = context.device, context.precision
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "dtype": "float32" if precision == torch.float32 else f"{str(precision).split('.')[-1]} autocast, float32 weights",
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "starfish": starfish_cli.__version__,
        "git_commit": git_commit(),
        "processes": context.world.size,
    }


def assemble_report(context: Context, pruned: Pruned, healed: Healed | None, evaluation: Evaluation | None,
                    calibration: Calibration | None = None) -> dict[str, Any]:
    """report.json's content, from the values the steps returned (labels included: `starfish report`
    reads reports only)."""
    report: dict[str, Any] = {
        "model": {"name": context.cfg.model.name, "parameters": sum(p.numel() for p in context.dense.parameters())},
        "seed": int(context.cfg.seed),
        "pruner": pruned.metadata["pruner"],
        "sparsity": pruned.metadata["sparsity"],
        "calibration": pruned.metadata["calibration"],
        "labels": {"pruner": PRUNERS.label(pruned.metadata["pruner"], ("name", "sparsity", "pattern"))},
        "checkpoints": {"pruned_masks_digest": pruned.metadata["masks_digest"]},
    }
    stages = {"calibration": calibration.timing if calibration else {},
              "prune": {**pruned.metadata.get("timing", {}), **({"reused": True} if pruned.reused else {})}}
    if healed is not None:
        report["healer"] = healed.metadata["healer"]
        report["calibration"] = healed.metadata["calibration"]
        report["labels"]["healer"] = HEALERS.label(healed.metadata["healer"])
        if "healing" in healed.metadata:  # checkpoints of version 0.1.0 did not record it
            report["healing"] = healed.metadata["healing"]
        stages["heal"] = healed.metadata.get("timing", {})
    if evaluation is not None:
        models = evaluation.results["models"]
        report["accuracy"] = {"split": evaluation.split, "images": evaluation.results["images"],
                              **{name: models[name] for name in ("dense", "pruned", "healed")}}
        dense_top1 = models["dense"]["top1"]
        report["recovery"] = models["healed"]["top1"] / dense_top1 if dense_top1 else None
        stages["eval"] = evaluation.timing
        if evaluation.speed is not None:
            report["speed"] = evaluation.speed
    report["stages"] = {name: entry for name, entry in stages.items() if entry}
    report["environment"] = environment(context)
    return report


# ---- one invocation
def execute(context: Context, inputs: Inputs, steps: tuple[str, ...]) -> dict[str, Any]:
    pruned = inputs.pruned if inputs.pruned is not None else prune(context, inputs.pruner, inputs.calibration)
    healed = heal(context, inputs.healer, pruned, inputs.calibration) if "heal" in steps else inputs.healed
    evaluation = (evaluate_models(context, pruned, healed, inputs.eval_data, inputs.eval_workers)
                  if "eval" in steps else None)
    report = assemble_report(context, pruned, healed, evaluation, inputs.calibration)
    if context.world.is_main:  # only rank 0 writes
        run_dir = context.folders.run_dir
        write_text_atomically(context.folders.record(run_dir / CONFIG_FILE),
                              OmegaConf.to_yaml(context.cfg, resolve=True))
        context.folders.record(run_dir / "report.json")
        context.folders.record(run_dir / "report.md")
        write_report(run_dir, report)
        if evaluation is not None:
            print_summary(report)
        log.info("run folder: %s", run_dir)
    return report


def run_stage(cfg: DictConfig, steps: tuple[str, ...]) -> str | None:
    """The body of every stage's @hydra.main. Bad input: one line on stderr, nothing left behind,
    and the message returned (the CLI then exits with code 2)."""
    folders = RunFolders.of(cfg, steps)
    earlier_results = has_results(folders.run_dir)
    if steps == RUN and cfg.skip_finished and finished(folders, cfg):
        log.info("skipping %s: a finished run with this exact config (skip_finished=false reruns it)",
                 folders.run_dir)
        return None
    try:
        if steps == ("export",):  # reads a finished run: no dense model, calibration or pruning
            from starfish_cli.stages.export import export_run

            export_run(cfg, folders)
        else:
            context, inputs = prepare(cfg, folders, steps)
            execute(context, inputs, steps)
    except StarfishError as error:
        if distributed.launched_world().is_main:
            folders.discard(earlier_results)
        message = str(error)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # say which run of the sweep failed; the others go on
            message = f"run {hydra_cfg.job.num} ({','.join(hydra_cfg.overrides.task) or 'defaults'}): {message}"
        print(f"starfish: error: {message}", file=sys.stderr)
        return message
    return None
