"""Wiring shared by the stage commands: config → objects → work → run folder.

Every stage validates all of its inputs (configs, data, checkpoints) before it writes
anything, so bad input leaves no half-written run folder behind.
"""

import copy
import json
import logging
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
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
from starfish_cli.checkpoint import Checkpoint, load_checkpoint, masks_digest, restore, save_checkpoint
from starfish_cli.data import DATASETS, ImageSource, ImageTensors, evaluation_tensors, loader, model_transform
from starfish_cli.errors import StarfishError
from starfish_cli.evaluation import evaluate
from starfish_cli.healing import HEALERS
from starfish_cli.models import build_model, prunable_layers
from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.masks import measure_sparsity
from starfish_cli.registry import check_arguments
from starfish_cli.report import print_summary, read_report, write_report
from starfish_cli.runtime import compile_blocks, measure, resolve_device, resolve_precision, seed_everything

log = logging.getLogger("starfish")

PRUNED_FILE = "pruned.safetensors"
HEALED_FILE = "healed.safetensors"
INDICES_FILE = "calibration_indices.json"
ARTIFACTS = (PRUNED_FILE, HEALED_FILE, INDICES_FILE, "report.json", "report.md", "config.yaml")


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(starfish_cli.__file__).parent,
                                capture_output=True, text=True, timeout=5)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, precision: torch.dtype) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "dtype": "float32" if precision == torch.float32 else f"{str(precision).split('.')[-1]} autocast, float32 weights",
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "starfish": starfish_cli.__version__,
        "git_commit": git_commit(),
    }


@dataclass
class Job:
    """One invocation of one or more steps (prune, heal, eval) in one run folder."""

    cfg: DictConfig
    run_dir: Path
    steps: tuple[str, ...]
    report: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)

    # ---- validation: everything that can be wrong with the input, before anything is written
    def prepare(self) -> None:
        cfg, steps = self.cfg, self.steps
        seed_everything(int(cfg.seed))
        self.world = distributed.setup(str(cfg.device))
        self.device = resolve_device(str(cfg.device))
        if self.world.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        self.precision = resolve_precision(str(cfg.precision), self.device)
        self.pruner = PRUNERS.build(plain(cfg.pruner), seed=int(cfg.seed)) if "prune" in steps else None
        self.healer = HEALERS.build(plain(cfg.healer), seed=int(cfg.seed)) if "heal" in steps else None
        check_arguments(CalibrationSampler, plain(cfg.calib), "calib", prefix="calib")
        self.sampler = CalibrationSampler(**plain(cfg.calib))
        self.data: ImageSource = DATASETS.build(plain(cfg.data))
        self.dense = build_model(**plain(cfg.model)).to(self.device)
        self.transform = model_transform(self.dense)
        self.channels = int(timm.data.resolve_data_config(model=self.dense)["input_size"][0])

        self.pruned_ckpt: Checkpoint | None = None
        self.healed_ckpt: Checkpoint | None = None
        if "prune" not in steps:
            path = Path(cfg.pruned) if cfg.pruned else self.run_dir / PRUNED_FILE
            self.pruned_ckpt = self._load_matching(path, "prune")
        if "eval" in steps and "heal" not in steps:
            path = Path(cfg.healed) if cfg.healed else self.run_dir / HEALED_FILE
            self.healed_ckpt = self._load_matching(path, "heal")
            if self.healed_ckpt.metadata.get("pruned_masks_digest") != self.pruned_ckpt.metadata["masks_digest"]:
                raise StarfishError(f"{path} was healed from a different pruned checkpoint: rerun `starfish heal`")
        if "prune" in steps or "heal" in steps:
            self.calibration = self._calibration_set()
        if "eval" in steps:
            self.eval_set = self._eval_set()

    def _load_matching(self, path: Path, made_by: str) -> Checkpoint:
        checkpoint = load_checkpoint(path, made_by)
        made_for = checkpoint.metadata.get("model", {}).get("name")
        if made_for != self.cfg.model.name:
            raise StarfishError(f"{path} was made for model {made_for!r}, not {self.cfg.model.name!r}: "
                                f"set model.name={made_for} or re-prune")
        restore(copy.deepcopy(self.dense), checkpoint, path)  # architecture check before any work
        return checkpoint

    def _calibration_set(self) -> ImageTensors:
        subset, self.calib_indices, balanced = self.data.calibration_split(self.sampler, seed=int(self.cfg.seed))
        with_labels = bool(getattr(self.healer, "labels_used", False))
        if with_labels and "label" not in subset.column_names:
            raise StarfishError(f"healer={self.healer.registered_name} needs labels, and "
                                f"{self.data.describe(self.data.calib_split)} has none: choose a labelled split")
        if "label" in subset.column_names and not with_labels:
            subset = subset.remove_columns("label")  # healing never sees labels
        self.calib_info = {
            "count": len(self.calib_indices),
            "source": self.data.describe(self.data.calib_split),
            "balanced": balanced,
            "labels_used": bool(getattr(self.healer, "labels_used", False)),
            "indices_file": INDICES_FILE,
        }
        return ImageTensors(subset, self.transform, self.channels, with_labels=with_labels)

    def _eval_set(self) -> torch.utils.data.Dataset:
        split = self.data.evaluation_split(self.cfg.eval.max_images)
        self.eval_source = self.data.describe(self.data.eval_split)
        return evaluation_tensors(split, self.transform, self.channels)

    # ---- the work
    def execute(self) -> None:
        if "prune" in self.steps:
            self._prune()
        if "heal" in self.steps:
            self._heal()
        if "eval" in self.steps:
            self._evaluate()
        self._finish()

    def _student_from(self, checkpoint: Checkpoint) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        model = copy.deepcopy(self.dense)
        masks = restore(model, checkpoint, Path("checkpoint"))
        return model.to(self.device).eval(), masks

    def _prune(self) -> None:
        self.report = {}  # a new pruning makes every later result of this folder stale
        calibration = [batch[1].to(self.device) for batch in loader(self.calibration, 32)]
        with measure("prune", self.device, self.stages):
            self.pruned = copy.deepcopy(self.dense)
            self.masks = self.pruner.prune(self.pruned, calibration if self.pruner.needs_calibration else None)
            # one set of masks and weights for every rank: rank 0's
            distributed.broadcast_from_main([*self.pruned.state_dict().values(), *self.masks.values()])
        sparsity = measure_sparsity(self.pruned, prunable_layers(self.pruned))
        log.info("pruned with %s: %.4f of prunable weights are zero", self.pruner.registered_name, sparsity["prunable"])
        self._write_indices()
        metadata = self._base_metadata() | {"stage": "pruned", "sparsity": sparsity}
        if self.world.is_main:
            save_checkpoint(self.run_dir / PRUNED_FILE, self.pruned, self.masks, metadata)
        self.pruned_metadata = json.loads(json.dumps(metadata)) | {"masks_digest": masks_digest(self.masks)}

    def _heal(self) -> None:
        if self.pruned_ckpt is not None:
            self.pruned, self.masks = self._student_from(self.pruned_ckpt)
            self.pruned_metadata = self.pruned_ckpt.metadata
        self.healed = copy.deepcopy(self.pruned)
        if self.cfg.compile:
            compile_blocks(self.healed)
            compile_blocks(self.dense)
        with measure("heal", self.device, self.stages):
            result = self.healer.heal(self.healed, self.dense, self.masks, self.calibration, self.device,
                                      self.precision)
        self.healed.eval()
        self.heal_result = result
        log.info("healed with %s: %d steps, final loss %s", self.healer.registered_name, result.steps,
                 f"{result.loss_history[-1]:.5f}" if result.loss_history else "–")
        self._write_indices()
        metadata = self._base_metadata() | {
            "stage": "healed",
            "healer": self.healer.describe(),
            "pruned_masks_digest": self.pruned_metadata["masks_digest"],
            "sparsity": self.pruned_metadata["sparsity"],
            "pruner": self.pruned_metadata["pruner"],
            "calibration": self.pruned_metadata.get("calibration", self.calib_info),
        }
        if self.world.is_main:
            save_checkpoint(self.run_dir / HEALED_FILE, self.healed, self.masks, metadata)
        self.healed_metadata = metadata

    def _evaluate(self) -> None:
        if self.healed_ckpt is not None:
            self.pruned, _ = self._student_from(self.pruned_ckpt)
            self.healed, _ = self._student_from(self.healed_ckpt)
            self.pruned_metadata, self.healed_metadata = self.pruned_ckpt.metadata, self.healed_ckpt.metadata
        models = {"dense": self.dense, "pruned": self.pruned, "healed": self.healed}
        if self.cfg.compile:
            for model in models.values():
                compile_blocks(model)
        # a sweep re-evaluates the same dense model, and each pruned checkpoint under every healer
        size = len(self.eval_set) if hasattr(self.eval_set, "__len__") else None
        cache_key = json.dumps([plain(self.cfg.model), plain(self.cfg.data), self.cfg.eval.max_images, size,
                                int(self.cfg.eval.batch_size), str(self.precision), str(self.device)], sort_keys=True)
        pruned_key = cache_key + self.pruned_metadata["masks_digest"] + json.dumps(self.pruned_metadata["pruner"])
        cache_keys = {"dense": cache_key, "pruned": pruned_key}
        if not HEALERS.get(self.healed_metadata["healer"]["name"]).changes_weights:
            cache_keys["healed"] = pruned_key
        with measure("eval", self.device, self.stages):
            self.results = evaluate(models, self.eval_set, self.device, batch_size=int(self.cfg.eval.batch_size),
                                    num_workers=int(self.cfg.eval.num_workers), precision=self.precision,
                                    cache_keys=cache_keys)

    def _base_metadata(self) -> dict[str, Any]:
        return {
            "model": plain(self.cfg.model),
            "pruner": self.pruner.describe() if self.pruner else self.pruned_metadata["pruner"],
            "calibration": self.calib_info,
            "seed": int(self.cfg.seed),
        }

    def _write_indices(self) -> None:
        if not self.world.is_main:
            return
        text = json.dumps({"source": self.calib_info["source"], "seed": int(self.cfg.seed),
                           "indices": self.calib_indices}) + "\n"
        write_text_atomically(self.run_dir / INDICES_FILE, text)

    def _finish(self) -> None:
        report = self.report if "prune" in self.steps else read_report(self.run_dir)
        report.update({
            "model": {"name": self.cfg.model.name, "parameters": sum(p.numel() for p in self.dense.parameters())},
            "seed": int(self.cfg.seed),
            "environment": environment(self.device, self.precision),
        })
        source = getattr(self, "healed_metadata", None) or getattr(self, "pruned_metadata", None)
        if source:
            report["pruner"] = source["pruner"]
            report["sparsity"] = source["sparsity"]
            report["calibration"] = dict(source["calibration"])
        if "healer" in (source or {}):
            report["healer"] = source["healer"]
            report["calibration"]["labels_used"] = bool(HEALERS.get(source["healer"]["name"]).labels_used)
        if "heal" in self.steps:
            result = self.heal_result
            report["healing"] = {
                "steps": result.steps,
                "trained_parameters": len(result.trained_parameters),
                "final_loss": result.loss_history[-1] if result.loss_history else None,
                "loss_history": result.loss_history,
            }
        if "eval" in self.steps:
            models = self.results["models"]
            report["accuracy"] = {
                "split": self.eval_source,
                "images": self.results["images"],
                **{name: models[name] for name in ("dense", "pruned", "healed")},
            }
            report["recovery"] = models["healed"]["top1"] / models["dense"]["top1"] if models["dense"]["top1"] else None
        report["stages"] = {**report.get("stages", {}), **self.stages}
        report["environment"]["processes"] = self.world.size
        self.report = report
        if not self.world.is_main:
            return  # only rank 0 writes
        write_text_atomically(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        write_report(self.run_dir, report)
        self.report = report
        if "eval" in self.steps:
            print_summary(report)
        log.info("run folder: %s", self.run_dir)


def run_stage(cfg: DictConfig, steps: tuple[str, ...]) -> dict[str, Any]:
    """The body of every stage's @hydra.main. Bad input: one line on stderr, exit code 2, nothing left behind."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    earlier_outputs = [name for name in ARTIFACTS if (run_dir / name).exists()]
    if steps == ("prune", "heal", "eval") and cfg.skip_finished and _finished(run_dir, cfg):
        log.info("skipping %s: a finished run with this exact config (skip_finished=false reruns it)", run_dir)
        return read_report(run_dir)
    job = Job(cfg, run_dir, steps)
    try:
        job.prepare()
        job.execute()
    except StarfishError as error:
        if distributed.launched_world().is_main:
            _discard(run_dir, earlier_outputs, hydra_cfg)
        print(f"starfish: error: {error}", file=sys.stderr)
        sys.exit(2)
    return job.report


def _finished(run_dir: Path, cfg: DictConfig) -> bool:
    try:
        same_config = (run_dir / "config.yaml").read_text() == OmegaConf.to_yaml(cfg, resolve=True)
    except OSError:
        return False
    return same_config and "accuracy" in read_report(run_dir) and (run_dir / HEALED_FILE).is_file()


def _discard(run_dir: Path, earlier_outputs: list[str], hydra_cfg) -> None:
    """Remove what this invocation created; a folder holding earlier results keeps them."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    if earlier_outputs:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    stop = Path(hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else str(run_dir.parts[0])).resolve()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_files = {p.name for p in stop.iterdir()} if stop.is_dir() else set()
        if sweep_files <= {"multirun.yaml"}:
            shutil.rmtree(stop, ignore_errors=True)
    parent = run_dir.resolve().parent
    while parent != parent.parent and parent.is_dir() and not any(parent.iterdir()) and parent != Path.cwd():
        parent.rmdir()
        parent = parent.parent
