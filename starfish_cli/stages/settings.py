"""The settings every stage reads: plain values of config nodes, and the checks that run before
anything is loaded or written (so that bad input is one line and leaves nothing behind)."""

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from starfish_cli.artifacts.export import check_options as check_export_options
from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.healing import HEALERS
from starfish_cli.healing.holdout import check_holdout
from starfish_cli.models import family_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.base import WeightPruner
from starfish_cli.registry import check_arguments, check_types
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.stages.schema import EvalSettings, RunSettings, checked

PRUNING_CONFIG = ("model", "data", "calib", "pruner", "seed")  # everything that determines a pruned checkpoint


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def pruning_config(cfg: DictConfig) -> dict[str, Any]:
    return {key: plain(cfg[key]) for key in PRUNING_CONFIG}


def check_settings(cfg: DictConfig) -> None:
    """The top-level keys, `eval.*`, `model`, `calib` and `export`: one line for a value of the wrong kind or range."""
    checked(RunSettings, cfg)
    checked(EvalSettings, cfg.eval, prefix="eval.")
    model = plain(cfg.model)
    check_types(family_of(model).build, model, prefix="model")
    for key, empty in (("seq_len", None), ("tasks", [])):
        value = OmegaConf.to_object(cfg.eval[key]) if OmegaConf.is_config(cfg.eval.get(key)) else cfg.eval.get(key)
        if value not in (None, empty) and family_of(model).modality != "text":
            raise StarfishError(f"eval.{key}={value} is for language models, and this is a "
                                f"{family_of(model).family} model: leave eval.{key}={'null' if empty is None else '[]'}")
    calibration_sampler(cfg)
    check_export_options(cfg.export.format, cfg.export.dtype, cfg.export.get("push_to_hub"))


def calibration_sampler(cfg: DictConfig) -> CalibrationSampler:
    """The `calib` node's sampler: an unknown key or a value outside its declaration is one line."""
    options = plain(cfg.calib)
    check_arguments(CalibrationSampler, options, "calib", prefix="calib")
    return CalibrationSampler(**options)


def check_config(cfg: DictConfig, steps: tuple[str, ...]) -> None:
    """Everything a stage can check from its config alone, without a model or data: the settings (the
    calibration sampler among them), and the pruner and healer built from their nodes. The CLI runs it on every run of
    a sweep before the first one starts."""
    check_settings(cfg)
    pruner = PRUNERS.build(plain(cfg.pruner), seed=int(cfg.seed)) if "prune" in steps else None
    if pruner is not None:
        pruner.check_family(family_of(plain(cfg.model)))
    if "heal" in steps:
        healer = HEALERS.build(plain(cfg.healer), seed=int(cfg.seed))
        if pruner is not None:
            check_schedule_below_pruner(getattr(healer, "schedule", ()), pruner)
        check_holdout(getattr(healer, "holdout", 0.0), cfg.calib.get("count"), int(os.environ.get("WORLD_SIZE", 1)))


def check_schedule_below_pruner(schedule, pruner) -> None:
    """A gradual-healing schedule must end below the sparsity the pruner prunes to. Where the config fixes
    that sparsity (one fraction for every layer, or an N:M pattern), a schedule that reaches it fails here,
    before any pruning; per-layer mappings and structured pruning are checked on the masks when healing starts."""
    if not schedule or not isinstance(pruner, WeightPruner):
        return
    final = pruner.describe()["sparsity"]  # an N:M pattern's own (2:4 → 0.5), else pruner.sparsity
    if isinstance(final, float) and max(schedule) >= final:
        source = f"pruner.pattern={pruner.pattern}" if pruner.pattern != "unstructured" else f"pruner.sparsity={final}"
        raise StarfishError(f"healer.schedule={list(schedule)}: every sparsity must be below the pruner's final one, "
                            f"and {source} prunes to {final:g}")


def eval_workers(setting) -> int:
    """`auto`: one loader process per spare core (at most 8), so decoding overlaps the forward passes."""
    if str(setting) == "auto":
        return min(8, max(0, (os.cpu_count() or 1) - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise StarfishError(f"eval.num_workers={setting!r}: give auto or a whole number ≥ 0")
    return setting
