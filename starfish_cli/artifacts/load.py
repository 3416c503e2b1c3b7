"""`starfish_cli.load(PATH)`: the one way from a run folder, checkpoint or export back to a model of either
family (a timm ViT, a transformers causal LM), built by its family's registry entry."""

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from starfish_cli.artifacts.checkpoint import (
    HEALED_FILE, HEALED_FOLDER, PRUNED_FILE, Checkpoint, is_checkpoint_folder, load_checkpoint, read_header, restore,
)
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.artifacts.export import EXPORT_DIR, FORMAT as EXPORT_FORMAT, MODEL_FILE, read_export
from starfish_cli.models import build_model, family_of, structure_of


def load(path: str | Path) -> nn.Module:
    """The model in `path`, in eval mode. A vision model's `pretrained_cfg` holds its data config (so that
    `timm.data.create_transform(**timm.data.resolve_data_config(model=model))` preprocesses for it).

    `path`: a healer's run folder (its export when there is one, else healed.safetensors), an export
    folder or its model.safetensors, or a starfish checkpoint (pruned or healed .safetensors).
    No weights are fetched: the model is built from its recorded config and the weights come from the file
    (a causal LM reads its architecture, config.json, from where it was loaded).
    """
    file = model_file(Path(path).expanduser())
    weights, metadata = read_weights(file)
    model = rebuild(metadata["model"], metadata.get("structure"), metadata)
    restore(model, Checkpoint(weights, {}, metadata), file)
    return model.eval()


def model_file(path: Path) -> Path:
    """The file `load` reads for `path`."""
    if path.is_dir():
        for folder in (path, path / HEALED_FOLDER):  # a layer-by-layer run's healed model is a checkpoint folder
            if is_checkpoint_folder(folder, "heal"):
                return folder
        export, healed = path / EXPORT_DIR / MODEL_FILE, path / HEALED_FILE
        if export.is_file() and healed.is_file() and healed.stat().st_mtime_ns > export.stat().st_mtime_ns:
            warnings.warn(f"{healed} is newer than its export: loading it (rerun `starfish export` to update "
                          f"{path / EXPORT_DIR})", stacklevel=3)
            return healed
        for candidate in (export, path / MODEL_FILE, healed):
            if candidate.is_file():
                return candidate
        if (path / PRUNED_FILE).is_file():
            raise StarfishError(f"{path} is a pruning folder: give one of its healer folders (e.g. {path / 'starfish'}) "
                                f"or {path / PRUNED_FILE} itself")
        raise StarfishError(f"{path} holds no starfish model: give a run folder with {HEALED_FILE} or "
                            f"{EXPORT_DIR}/, an export folder, or a .safetensors file")
    if not path.is_file():
        raise StarfishError(f"{path} does not exist: give a run folder, an export folder or a .safetensors file")
    return path


def read_weights(file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dense weights and metadata of a checkpoint or an export file."""
    header = read_header(file) if file.is_file() else None
    if header is not None and header.get("format") == EXPORT_FORMAT:
        return read_export(file)
    checkpoint = load_checkpoint(file, "heal")  # not starfish's: a clear error
    return checkpoint.weights, checkpoint.metadata


def rebuild(model_config: dict[str, Any], structure: dict[str, Any] | None = None,
            recorded: dict[str, Any] | None = None) -> nn.Module:
    """A fresh model of the recorded config with random weights (none are downloaded), sliced to
    `structure` (structured pruning's kept sizes) when there is one; `recorded`: an export header's
    additions (a vision model's data config)."""
    model = build_model(family_of(model_config).offline_config(model_config, recorded or {}))
    if structure:
        structure_of(model).resize(structure)
    return model
