"""Resumable healing under torchrun: each rank's shards of the trained weights and of Adam's moments saved with
torch.distributed.checkpoint (DCP) every N steps, the rest (step, loss history, schedule, learning rates, every
rank's RNG) in a JSON file written last, which names the checkpoint it completes.

Only tensors go through DCP (its non-tensor items would be unpickled on load), and its metadata file is read with
an unpickler that knows DCP's own record types and nothing else. A rerun of the same command on the same run
folder continues from the last complete checkpoint; another healing configuration's checkpoint is ignored."""

import io
import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from starfish_cli.healing.resume import fingerprint_of
from starfish_cli.runtime import distributed
from starfish_cli.runtime.atomic import write_text_atomically

log = logging.getLogger("starfish")

LATEST = "latest.json"  # the last complete checkpoint; written by rank 0 after every rank has saved its shards
ADAM_TENSORS = ("exp_avg", "exp_avg_sq", "step")
# what DCP's metadata is made of: its records, torch sizes, layouts and dtypes, the path it was saved to
METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                                              "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
}


class DCPMetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` holds its own dataclasses, torch sizes and dtypes: anything else is refused."""

    def find_class(self, module: str, name: str):
        dtype = module == "torch" and "." not in name and isinstance(getattr(torch, name, None), torch.dtype)
        if dtype or name in METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def checkpoint_reader(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / ".metadata", "rb") as stream:
                metadata = DCPMetadataUnpickler(io.BytesIO(stream.read())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def shards_folder(state_file: Path) -> Path:
    """Where the sharded state lives, beside the one-process state file (`heal_state.pt` → `heal_state_shards/`)."""
    return state_file.with_name(f"{state_file.stem}_shards")


class ShardedResumeState:
    def __init__(self, state_file: Path | None, every: int, identity: Any, model: nn.Module):
        self.folder = shards_folder(Path(state_file)) if state_file else None
        self.every, self.model = every, model
        self.fingerprint = fingerprint_of(identity)

    @property
    def enabled(self) -> bool:
        return self.folder is not None and self.every > 0

    def due(self, step: int, total: int) -> bool:
        return self.enabled and step % self.every == 0 and step < total

    @staticmethod
    def _tensors(parameters: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer, optimized: list[str],
                 rng: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat tensor dict DCP saves and loads: trained weights (DTensor shards under FSDP2), Adam's state of
        those it has updated (a weight no loss reaches has none), the RNG states."""
        tensors = {f"parameters.{name}": parameter.detach() for name, parameter in parameters.items()}
        for name in optimized:
            for key in ADAM_TENSORS:
                tensors[f"optimizer.{name}.{key}"] = optimizer.state[parameters[name]][key]
        tensors["rng"] = rng
        return tensors

    def save(self, step: int, parameters: dict[str, nn.Parameter], optimizer, scheduler,
             history: list[float]) -> None:
        import torch.distributed.checkpoint as dcp

        world = distributed.current()
        rng = [torch.empty_like(torch.get_rng_state()) for _ in range(world.size)]
        dist.all_gather(rng, torch.get_rng_state())  # every rank's generator, saved as one replicated tensor
        checkpoint = f"step-{step:08d}"
        optimized = [name for name, parameter in parameters.items() if optimizer.state.get(parameter)]
        dcp.save(self._tensors(parameters, optimizer, optimized, torch.stack(rng)),
                 checkpoint_id=self.folder / checkpoint)
        dist.barrier()  # every rank's shards are on disk before the checkpoint is named complete
        if world.is_main:
            groups = [{key: value for key, value in group.items() if key != "params"}
                      for group in optimizer.state_dict()["param_groups"]]
            write_text_atomically(self.folder / LATEST, json.dumps({
                "fingerprint": self.fingerprint, "step": step, "checkpoint": checkpoint, "ranks": world.size,
                "optimized": optimized, "history": history, "scheduler": scheduler.state_dict(),
                "param_groups": groups}))
            for older in self.folder.glob("step-*"):
                if older.name != checkpoint:
                    shutil.rmtree(older, ignore_errors=True)
        dist.barrier()

    def _saved(self) -> dict[str, Any] | None:
        latest = self.folder / LATEST if self.enabled else None
        if latest is None or not latest.is_file():
            return None
        saved = json.loads(latest.read_text())
        if saved.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it was saved by another healing configuration", self.folder)
            return None
        return saved

    @torch.no_grad()
    def resume(self, parameters: dict[str, nn.Parameter], optimizer, scheduler, history: list[float]) -> int:
        """Load the last complete checkpoint into the (sharded) parameters and Adam; the step to continue from."""
        import torch.distributed.checkpoint as dcp

        saved = self._saved()
        if saved is None:
            return 0
        world = distributed.current()
        for name in saved["optimized"]:  # Adam's state, shaped (and sharded) as the weights, to load into
            parameter = parameters[name]
            optimizer.state[parameter] = {"step": torch.zeros((), dtype=torch.float32),
                                          "exp_avg": torch.zeros_like(parameter),
                                          "exp_avg_sq": torch.zeros_like(parameter)}
        rng = torch.zeros(saved["ranks"], torch.get_rng_state().numel(), dtype=torch.uint8)
        tensors = self._tensors(parameters, optimizer, saved["optimized"], rng)
        dcp.load(tensors, storage_reader=checkpoint_reader(self.folder / saved["checkpoint"]))
        for group, values in zip(optimizer.param_groups, saved["param_groups"]):
            group.update({key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})
        scheduler.load_state_dict(saved["scheduler"])
        history[:] = saved["history"]
        torch.set_rng_state(tensors["rng"][world.rank % saved["ranks"]].clone())
        log.info("resuming healing from %s at step %d (saved by %d ranks)", self.folder / saved["checkpoint"],
                 saved["step"], saved["ranks"])
        return int(saved["step"])

    def remove(self) -> None:
        if not self.enabled:
            return
        dist.barrier()  # no rank still reads it
        if distributed.current().is_main:
            shutil.rmtree(self.folder, ignore_errors=True)
