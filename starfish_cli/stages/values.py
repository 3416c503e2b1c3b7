"""The values the steps of a stage hand each other: what one invocation shares (`Context`), its
validated inputs (`Inputs`) and each step's result (`Pruned`, `Healed`, `Evaluation`)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from starfish_cli.evaluation.cache import SweepCache
from starfish_cli.evaluation.zero_shot import ZeroShot
from starfish_cli.healing import Healer
from starfish_cli.pruning import Pruner
from starfish_cli.runtime import distributed
from starfish_cli.stages.layout import RunFolders


@dataclass(frozen=True)
class Context:
    """What every step of one invocation shares."""

    cfg: DictConfig
    folders: RunFolders
    world: distributed.World
    device: torch.device
    precision: torch.dtype
    dense: nn.Module
    sweep_cache: SweepCache | None  # one of several runs in this process (Hydra multirun): what they share
    onloaded: Path | None = None  # the model's folder when it is read one decoder layer at a time (`onload`)


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
    zero_shot: dict[str, Any] | None = None  # `ZeroShot.evaluate()`'s per-model task metrics (eval.tasks)


@dataclass(frozen=True)
class EvaluationData:
    images: torch.utils.data.Dataset  # (index, pixels, label) items
    finish: Any  # batch of pixels → the models' inputs, on the device (None: items are inputs already)
    source: str
    zero_shot: ZeroShot | None = None  # language models: lm-eval tasks (eval.tasks), checked


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
