"""OmegaConf resolvers: a stable, readable run-folder path from a config, and the healing recipe a pruner calls for."""

import re

from omegaconf import OmegaConf

# Overrides that change what `starfish prune` makes: they name the pruned checkpoint's folder.
PRUNING_KEYS = ("model", "data", "calib", "pruner")
# Keys already in the folder path, or that do not change results: they stay out of its suffix.
# (the top-level and eval keys that change no result are declared so in stages.schema)
IN_PATH = {"experiment", "model", "model.name", "pruner", "pruner.name", "pruner.sparsity",
           "pruner.heads", "pruner.mlp", "pruner.layers",  # structured pruning's folder name has them
           "pruner.pattern", "healer", "healer.name", "seed", "healer.save_every", "export.format", "export.dtype",
           "logger"}
# Groups none of whose keys change results (where metrics are also sent): `logger.mlflow.tracking_uri=…`.
NEUTRAL_GROUPS = ("logger",)


def path_safe(text) -> str:
    """A single path component: '/', ':' and whitespace become '_'."""
    return re.sub(r"[/:\\\s]+", "_", str(text)).strip("_") or "_"


def prune_dir(pruner) -> str:
    """`wanda-0.75` for unstructured pruning, `wanda-2_4` for N:M (which fixes the sparsity),
    `structured-heads0.5-mlp0.5` for whole heads and neurons (`…-layers6` with whole blocks removed too)."""
    name = pruner["name"]
    if "heads" in pruner and "mlp" in pruner:
        layers = f"-layers{pruner['layers']}" if pruner.get("layers") else ""
        return f"{name}-heads{pruner['heads']}-mlp{pruner['mlp']}{layers}"
    pattern, sparsity = pruner.get("pattern"), pruner.get("sparsity")
    return f"{name}-{path_safe(pattern)}" if str(pattern) != "unstructured" else f"{name}-{sparsity}"


def is_pruning_key(key: str) -> bool:
    return key.split(".")[0] in PRUNING_KEYS


def overrides_suffix(part: str, overrides) -> str:
    """`+key=value,…` for the command-line overrides that belong to `part` (`prune`: model, data,
    calibration and pruner; `heal`: everything else) and are not in the path already; "" if none."""
    from starfish_cli.stages.schema import neutral_keys  # here: composing a config imports it, `--help` does not

    skipped = IN_PATH | neutral_keys()
    chosen = []
    for override in overrides or ():
        key, _, value = str(override).partition("=")
        key = key.lstrip("+~")
        neutral = key in skipped or key.split(".")[0] in NEUTRAL_GROUPS or key.startswith("hydra.")
        if neutral or is_pruning_key(key) != (part == "prune"):
            continue
        chosen.append(f"{key}={value}")
    return f"+{path_safe(','.join(sorted(chosen)))}" if chosen else ""


def experiment_dir(choice) -> str:
    return path_safe(choice) if choice else "default"


def healing_recipe(pruner, model) -> str:
    """`healer.recipe`'s default: the recipe measured best for the pruner's pattern on this kind of model."""
    from starfish_cli.healing.recipes import recipe_for  # here: `starfish --help` imports no torch
    from starfish_cli.models import family_of
    return recipe_for(pruner, family_of(model).modality)


def register() -> None:
    for name, function in {
        "starfish.safe": path_safe,
        "starfish.prune_dir": prune_dir,
        "starfish.overrides": overrides_suffix,
        "starfish.experiment_dir": experiment_dir,
        "starfish.recipe": healing_recipe,
    }.items():
        OmegaConf.register_new_resolver(name, function, replace=True)
