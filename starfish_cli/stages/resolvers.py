"""OmegaConf resolvers that turn a config into a stable, readable run-folder path."""

import re

from omegaconf import OmegaConf


def path_safe(text) -> str:
    """A single path component: '/', ':' and whitespace become '_'."""
    return re.sub(r"[/:\\\s]+", "_", str(text)).strip("_") or "_"


def prune_dir(name, pattern, sparsity) -> str:
    """`wanda-0.75` for unstructured pruning, `wanda-2_4` for N:M (which fixes the sparsity)."""
    return f"{name}-{path_safe(pattern)}" if str(pattern) != "unstructured" else f"{name}-{sparsity}"


def extra_dir(override_dirname) -> str:
    """Overrides that change results but are not in the path already, appended as `+key=value,...`."""
    return f"+{path_safe(override_dirname)}" if override_dirname else ""


def experiment_dir(choice) -> str:
    return path_safe(choice) if choice else "default"


def register() -> None:
    for name, function in {
        "starfish.safe": path_safe,
        "starfish.prune_dir": prune_dir,
        "starfish.extra_dir": extra_dir,
        "starfish.experiment_dir": experiment_dir,
    }.items():
        OmegaConf.register_new_resolver(name, function, replace=True)
