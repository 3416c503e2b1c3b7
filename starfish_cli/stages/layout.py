"""Where a run's artifacts live, whether an earlier run already made them, and how a failed
invocation removes what it wrote.

The pruned checkpoint lives in the folder of everything that determines it (model, data,
calibration, pruner, seed); each healer's results in a subfolder of it. A `hydra.run.dir`
(or sweep folder) of the user's own holds everything of that run.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from starfish_cli.artifacts.checkpoint import (
    HEALED_FILE, HEALED_FOLDER, PRUNED_FILE, PRUNED_FOLDER, is_checkpoint_folder, read_metadata,
)
from starfish_cli.reporting.report import read_report

INDICES_FILE = "calibration_indices.json"
CONFIG_FILE = "config.yaml"
HEAL_STATE_FILE = "heal_state.pt"  # healing's resumable state while it runs (healer.save_every)


@dataclass
class RunFolders:
    """The folders of one invocation, and every file it has written (removed again if it fails)."""

    run_dir: Path  # Hydra's output folder: config, log and report of this invocation
    prune_dir: Path  # where pruned.safetensors and the calibration indices live
    written: list[Path] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: DictConfig, steps: tuple[str, ...]) -> "RunFolders":
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if steps == ("prune",):
            return cls(run_dir, run_dir)
        layout_prune = Path(cfg.layout.root) / cfg.layout.prune
        in_layout = run_dir.resolve() == (Path(cfg.layout.root) / cfg.layout.heal).resolve()
        return cls(run_dir, layout_prune if in_layout else run_dir)

    def record(self, path: Path) -> Path:
        self.written.append(Path(path))
        return Path(path)

    def discard(self, existed_before: bool) -> None:
        """Remove what this invocation wrote; a run folder that held earlier results keeps them."""
        for folder in {self.run_dir, self.prune_dir}:
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        for path in self.written:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not existed_before:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        stop = Path(hydra_cfg.sweep.dir).resolve() if multirun else Path.cwd()
        for folder in (self.run_dir, self.prune_dir):
            _remove_empty_parents(folder.resolve(), stop)
        if multirun and stop.is_dir() and {p.name for p in stop.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(stop, ignore_errors=True)  # a sweep whose every run failed leaves nothing
            _remove_empty_parents(stop.parent, Path.cwd())


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove `folder` (if it is still there) and every parent up to `stop` that is left empty."""
    while folder != folder.parent and folder != stop:
        if folder.is_dir():
            if any(folder.iterdir()):
                return
            folder.rmdir()
        folder = folder.parent


def has_results(run_dir: Path) -> bool:
    """Whether the folder holds anything but what Hydra writes at the start of every invocation."""
    return run_dir.is_dir() and any(p.name != ".hydra" and p.suffix != ".log" for p in run_dir.iterdir())


def finished(folders: RunFolders, cfg: DictConfig) -> bool:
    """A finished `starfish run` of this exact config, healed from the pruned checkpoint now on disk."""
    try:
        same_config = (folders.run_dir / CONFIG_FILE).read_text() == OmegaConf.to_yaml(cfg, resolve=True)
    except OSError:
        return False
    report = read_report(folders.run_dir)
    pruned = read_metadata(pruned_checkpoint(folders), "prune")  # a folder's header is written after its shards
    return (same_config and "accuracy" in report and read_metadata(healed_checkpoint(folders.run_dir), "heal")
            is not None and pruned is not None
            and report.get("checkpoints", {}).get("pruned_masks_digest") == pruned.get("masks_digest"))


def healed_checkpoint(run_dir: Path) -> Path:
    """A healer's run folder's healed model: healed.safetensors, or the healed/ folder a layer-by-layer run wrote."""
    folder = Path(run_dir) / HEALED_FOLDER
    return folder if is_checkpoint_folder(folder, "heal") else Path(run_dir) / HEALED_FILE


def pruned_checkpoint(folders: RunFolders) -> Path:
    """The pruned model a run reads: the pruning folder's pruned.safetensors, or the folder a layer-by-layer run
    wrote into its run folder (pruned/, or healed/ when healing changed nothing)."""
    for name in (PRUNED_FOLDER, HEALED_FOLDER):
        if is_checkpoint_folder(folders.run_dir / name, "prune"):
            return folders.run_dir / name
    return folders.prune_dir / PRUNED_FILE
