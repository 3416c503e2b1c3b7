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


def read_header(path: Path) -> dict[str, Any] | None:
    """The starfish metadata of a safetensors file (a checkpoint's or an export's; header only, no
    tensors); None if there is none."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get("starfish", "null"))
    except (SafetensorError, OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The starfish metadata of a checkpoint file; None if it is not one."""
    metadata = read_header(path)
    return metadata if metadata is not None and metadata.get("format") == FORMAT else None


def load_checkpoint(path: Path, stage_hint: str) -> Checkpoint:
    """Read a checkpoint; `stage_hint` names the command that makes it, for the error message."""
    path = Path(path)
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
