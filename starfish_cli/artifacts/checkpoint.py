"""Checkpoints: model weights + pruning masks + metadata in one safetensors file, written atomically."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from starfish_cli.pruning.masks import masks_digest
from starfish_cli.runtime.atomic import write_atomically
from starfish_cli.runtime.errors import StarfishError

FORMAT = "starfish-checkpoint"
VERSION = 1
_MASK_PREFIX = "mask::"
PRUNED_FILE = "pruned.safetensors"  # a run folder's checkpoints (stages/layout.py places them)
HEALED_FILE = "healed.safetensors"
HEALED_FOLDER = "healed"  # layer by layer: the healed model as a save_pretrained folder (its masks in healed/masks)
PRUNED_FOLDER = "pruned"  # and the pruned one, when healing changes the weights (else it is healed/)
# a checkpoint written one decoder layer at a time is a folder: save_pretrained shards, the keep-masks in masks/
# (as `<layer>.weight`), and the header in a JSON file named for the stage (one folder may hold both, unhealed)
FOLDER_HEADERS = {"prune": "pruned.json", "heal": "healed.json"}
MASKS_FOLDER = "masks"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def save_checkpoint(path: Path, model: nn.Module, masks: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    seen: set[int] = set()
    for name, tensor in tensors.items():  # tied weights (a causal LM's head and embedding): one copy each
        if tensor.data_ptr() in seen:
            tensors[name] = tensor.clone()
        seen.add(tensor.data_ptr())
    tensors.update({_MASK_PREFIX + name: mask.cpu().contiguous() for name, mask in masks.items()})
    header = {"format": FORMAT, "version": VERSION, "masks_digest": masks_digest(masks), **metadata}
    write_atomically(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"starfish": json.dumps(header)}))


def save_folder_header(folder: Path, stage: str, digest: str, metadata: dict[str, Any]) -> None:
    """The header that makes a save_pretrained folder with its masks/ a checkpoint of `stage` (prune or heal);
    `digest`: its masks' (`masks_digest`, computed once by the caller: the masks are read from disk for it)."""
    header = {"format": FORMAT, "version": VERSION, "masks_digest": digest, **metadata}
    write_atomically(Path(folder) / FOLDER_HEADERS[stage],
                     lambda tmp: Path(tmp).write_text(json.dumps(header, indent=1) + "\n"))


def is_checkpoint_folder(path: Path, stage: str) -> bool:
    return (Path(path) / FOLDER_HEADERS[stage]).is_file()


def _load_folder(folder: Path, stage_hint: str) -> Checkpoint:
    """A checkpoint folder's weights (every shard), masks and header."""
    try:
        metadata = _folder_header(folder, stage_hint)
        weights = {name: tensor for shard in sorted(folder.glob("*.safetensors"))
                   for name, tensor in load_file(str(shard)).items()}
        masks = {name.removesuffix(".weight"): mask for shard in sorted((folder / MASKS_FOLDER).glob("*.safetensors"))
                 for name, mask in load_file(str(shard)).items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise StarfishError(f"{folder} is not a complete starfish checkpoint folder ({error}): "
                            f"rerun `starfish run` to rewrite it") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise StarfishError(f"{folder} is not a starfish checkpoint (no starfish header): rerun `starfish run`")
    return Checkpoint(weights, masks, metadata)


def read_header(path: Path) -> dict[str, Any] | None:
    """The starfish metadata of a safetensors file (a checkpoint's or an export's; header only, no
    tensors); None if there is none."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get("starfish", "null"))
    except (SafetensorError, OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def read_metadata(path: Path, stage: str = "prune") -> dict[str, Any] | None:
    """The starfish metadata of a checkpoint (a file, or a folder holding `stage`'s header); None if it is not one."""
    if Path(path).is_dir():
        try:
            metadata = _folder_header(Path(path), stage)
        except (OSError, ValueError):
            return None
    else:
        metadata = read_header(path)
    return metadata if isinstance(metadata, dict) and metadata.get("format") == FORMAT else None


def _folder_header(folder: Path, stage: str) -> Any:
    return json.loads((folder / FOLDER_HEADERS[stage]).read_text())


def load_checkpoint(path: Path, stage_hint: str) -> Checkpoint:
    """Read a checkpoint (a file, or a folder a layer-by-layer run wrote); `stage_hint` names the command that
    makes it, for the error message."""
    path = Path(path)
    if path.is_dir() and is_checkpoint_folder(path, stage_hint):
        return _load_folder(path, stage_hint)
    if not path.is_file():
        raise StarfishError(f"no checkpoint at {path}: run `starfish {stage_hint}` with the same overrides first, "
                            f"or point to one with {'pruned' if stage_hint == 'prune' else 'healed'}=PATH")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get("starfish")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise StarfishError(f"{path} is truncated or not a safetensors file ({error}): "
                            f"rerun `starfish {stage_hint}` to rewrite it") from error
    try:
        metadata = json.loads(header)
    except (TypeError, ValueError):
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise StarfishError(f"{path} is not a starfish checkpoint (no starfish metadata): "
                            f"rerun `starfish {stage_hint}`")
    masks = {k[len(_MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MASK_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(_MASK_PREFIX)}
    return Checkpoint(weights, masks, metadata)


def restore(model: nn.Module, checkpoint: Checkpoint, path: Path) -> dict[str, torch.Tensor]:
    """Load the checkpoint's weights into `model`; a different architecture is a clear error. Returns the masks."""
    expected = model.state_dict()
    weights = dict(checkpoint.weights)
    by_storage = {tensor.data_ptr(): name for name, tensor in expected.items() if name in weights}
    for name, tensor in expected.items():  # a save_pretrained folder leaves out a head tied to the embeddings
        if name not in weights and tensor.data_ptr() in by_storage:
            weights[name] = weights[by_storage[tensor.data_ptr()]]
    checkpoint = Checkpoint(weights, checkpoint.masks, checkpoint.metadata)
    mismatched = [
        name for name, tensor in expected.items()
        if name not in checkpoint.weights or checkpoint.weights[name].shape != tensor.shape
    ]
    unexpected = set(checkpoint.weights) - set(expected)
    if mismatched or unexpected:
        made_for = checkpoint.metadata.get("model", {}).get("name", "another model")
        raise StarfishError(
            f"{path} holds weights for a different architecture ({made_for}; "
            f"{len(mismatched)} missing or reshaped, {len(unexpected)} unexpected tensors): "
            "use the model= config it was made with, or re-prune"
        )
    model.load_state_dict(checkpoint.weights)
    return checkpoint.masks
