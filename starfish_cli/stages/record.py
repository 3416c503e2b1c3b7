"""report.json's content, assembled from the values the steps returned, with the environment they ran in."""

import platform
import subprocess
from pathlib import Path
from typing import Any

import timm
import torch

import starfish_cli
from starfish_cli.healing import HEALERS
from starfish_cli.pruning import PRUNERS
from starfish_cli.stages.resolvers import healing_recipe
from starfish_cli.stages.values import Calibration, Context, Evaluation, Healed, Pruned


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
        "labels": {"pruner": PRUNERS.label(pruned.metadata["pruner"], ("name", "sparsity", "pattern", "seed"))},
        "checkpoints": {"pruned_masks_digest": pruned.metadata["masks_digest"]},
    }
    if pruned.metadata.get("structure"):  # what structured pruning kept, per block (a causal LM: the dense layer each was)
        report["structure"] = pruned.metadata["structure"]
    stages = {"calibration": calibration.timing if calibration else {},
              "prune": {**pruned.metadata.get("timing", {}), **({"reused": True} if pruned.reused else {})}}
    if healed is not None:
        report["healer"] = healed.metadata["healer"]
        report["calibration"] = healed.metadata["calibration"]
        # the recipe the pruner calls for is the default: a sweep over sparsity stays one `starfish` column
        picked = {"recipe": healing_recipe(pruned.metadata["pruner"], context.cfg.model)}
        report["labels"]["healer"] = HEALERS.label(healed.metadata["healer"], run_defaults=picked)
        if "healing" in healed.metadata:  # checkpoints of version 0.1.0 did not record it
            report["healing"] = healed.metadata["healing"]
        stages["heal"] = healed.metadata.get("timing", {})
        if "onloading" in healed.metadata:  # pruned, healed and evaluated one layer at a time
            report["onloading"] = healed.metadata["onloading"]
    if evaluation is not None:
        models = evaluation.results["models"]
        report["accuracy"] = {"split": evaluation.split, "images": evaluation.results["images"],
                              **{name: models[name] for name in ("dense", "pruned", "healed")}}
        dense_top1 = models["dense"]["top1"]
        report["recovery"] = models["healed"]["top1"] / dense_top1 if dense_top1 else None
        stages["eval"] = evaluation.timing
        if evaluation.speed is not None:
            report["speed"] = evaluation.speed
        if evaluation.zero_shot is not None:
            report["zero_shot"] = evaluation.zero_shot
    report["stages"] = {name: entry for name, entry in stages.items() if entry}
    report["environment"] = environment(context)
    return report
