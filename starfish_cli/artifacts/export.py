"""Export: a healed checkpoint as a file to ship. Pruned matrices are stored compressed (bitmask
or N:M, see `sparse_format`), everything else dense, and `model.json` says how to rebuild it."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from starfish_cli.runtime.atomic import write_atomically
from starfish_cli.artifacts.checkpoint import read_header
from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.pruning.masks import Pattern, fits_nm, parse_pattern
from starfish_cli.artifacts.sparse_format import compress_bitmask, compress_nm, expand_bitmask, expand_nm

FORMAT = "starfish-export"
VERSION = 1
EXPORT_DIR = "export"  # inside the healer's run folder
MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "model.json"
ONNX_FILE = "model.onnx"
FORMATS = ("safetensors", "onnx", "hf")  # hf: the library's own folder (artifacts/hf.py), in <run folder>/hf/
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the tensors that stand for one compressed matrix NAME: NAME.<part>
PARTS = {"bitmask": ("bitmask", "values"), "n:m": ("values", "positions")}
_REPO_ID = re.compile(r"([\w.-]+/)?[\w.-]+")  # a hub repository id (the hub checks the rest)


def check_options(format: Any, dtype: Any, push_to_hub: Any = None) -> None:
    """`export.format`, `export.dtype` and `export.push_to_hub`: one line for a value starfish cannot write."""
    if format not in FORMATS:
        raise StarfishError(f"export.format={format!r}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise StarfishError(f"export.dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    if format == "onnx" and dtype != "float32":
        raise StarfishError(f"export.format=onnx writes float32 (what onnxruntime runs on CPUs), not "
                            f"export.dtype={dtype}: drop export.dtype, or use export.format=safetensors")
    if push_to_hub is not None and format != "hf":
        raise StarfishError(f"export.push_to_hub uploads the folder of export.format=hf, not of {format}: "
                            "add export.format=hf")
    if push_to_hub is not None and not (isinstance(push_to_hub, str) and _REPO_ID.fullmatch(push_to_hub)):
        raise StarfishError(f"export.push_to_hub={push_to_hub!r}: give a hub model repository, NAME or OWNER/NAME")


@dataclass
class Compressed:
    tensors: dict[str, torch.Tensor]  # what model.safetensors holds
    layouts: dict[str, dict[str, Any]]  # per compressed weight: layout ("bitmask" or "n:m"), shape, n, m


def compress(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], pattern: str = "unstructured",
             dtype: torch.dtype = torch.float32) -> Compressed:
    """The export of a checkpoint's tensors: each masked weight in the N:M layout when its mask keeps
    exactly N of every M (`pattern` "N:M"), else as a bitmask, unless that would not be smaller;
    floating-point values cast to `dtype`."""
    nm = parse_pattern(pattern) if ":" in str(pattern) else Pattern()  # structured pruners name other patterns
    tensors, layouts = {}, {}
    for name, tensor in weights.items():
        value = tensor.to(dtype) if tensor.is_floating_point() else tensor
        mask = masks.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        if mask is None or tensor.dim() != 2 or mask.shape != tensor.shape:
            tensors[name] = value
            continue
        if nm.is_nm and fits_nm(mask, nm.n, nm.m, exactly=True):
            layout, parts = {"layout": "n:m", "n": nm.n, "m": nm.m}, compress_nm(value, mask, nm.n, nm.m)
        else:
            layout, parts = {"layout": "bitmask"}, compress_bitmask(value, mask)
        if sum(_nbytes(part) for part in parts) >= _nbytes(value):  # a nearly full mask: dense is smaller
            tensors[name] = value
            continue
        layouts[name] = {**layout, "shape": list(tensor.shape)}
        tensors.update({f"{name}.{part}": t.contiguous() for part, t in zip(PARTS[layout["layout"]], parts)})
    return Compressed(tensors, layouts)


def expand(tensors: dict[str, torch.Tensor], layouts: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The dense tensors of an export (the inverse of `compress`, pruned weights as zeros)."""
    parts = {f"{name}.{part}" for name, layout in layouts.items() for part in PARTS[layout["layout"]]}
    weights = {name: tensor for name, tensor in tensors.items() if name not in parts}
    for name, layout in layouts.items():
        shape = tuple(layout["shape"])
        if layout["layout"] == "n:m":
            weights[name] = expand_nm(tensors[f"{name}.values"], tensors[f"{name}.positions"], shape,
                                      layout["n"], layout["m"])
        else:
            weights[name] = expand_bitmask(tensors[f"{name}.bitmask"], tensors[f"{name}.values"], shape)
    return weights


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def byte_counts(compressed: Compressed) -> dict[str, int]:
    """Bytes of kept values, of masks/positions and of dense tensors (the data, without the header)."""
    counts = {"values": 0, "indices": 0, "dense": 0}
    for name, tensor in compressed.tensors.items():
        base, _, part = name.rpartition(".")
        kind = "dense" if base not in compressed.layouts else "values" if part == "values" else "indices"
        counts[kind] += _nbytes(tensor)
    return counts


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """The size of `tensors` as a plain safetensors file (no metadata)."""
    return len(save({name: tensor.contiguous() for name, tensor in tensors.items()}))


def write_export(path: Path, compressed: Compressed, header: dict[str, Any]) -> None:
    """model.safetensors: the tensors, and in its metadata the layouts plus `header` (model config,
    data config, structure, dtype): enough to rebuild the model from this one file."""
    metadata = {"format": FORMAT, "version": VERSION, **header, "layouts": compressed.layouts}
    write_atomically(Path(path), lambda tmp: save_file(compressed.tensors, str(tmp),
                                                       metadata={"starfish": json.dumps(metadata)}))


def read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dense weights and the metadata of an export's model.safetensors."""
    header = read_header(path)
    if header is None or header.get("format") != FORMAT:
        raise StarfishError(f"{path} is not a starfish export (no starfish-export metadata): "
                            "rerun `starfish export`")
    try:
        tensors = load_file(str(path))
        return expand(tensors, header["layouts"]), header
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as error:
        raise StarfishError(f"{path} is truncated or damaged ({first_line(error)}): rerun `starfish export`") from error


def manifest(checkpoint_metadata: dict[str, Any], header: dict[str, Any], files: dict[str, int],
             sizes: dict[str, Any], accuracy: dict[str, Any] | None, onnx: dict[str, Any] | None) -> dict[str, Any]:
    """model.json: how to rebuild the model, what it is (pruner, healer, accuracy) and what it weighs."""
    model = header["model"]
    summary = {key: checkpoint_metadata[key] for key in ("pruner", "healer", "seed", "pruned_masks_digest")
               if key in checkpoint_metadata}
    sparsity = checkpoint_metadata.get("sparsity", {})
    healing = checkpoint_metadata.get("healing", {})
    return {
        "format": FORMAT, "version": VERSION,
        "files": files,
        "model": {"name": model["name"], "kwargs": model.get("kwargs") or {}},
        "data_config": header.get("data_config"),
        "structure": header.get("structure"),
        "dtype": header["dtype"],
        **summary,
        "sparsity": {key: sparsity[key] for key in ("prunable", "overall") if key in sparsity},
        "healing": {key: healing[key] for key in ("steps", "final_loss") if key in healing},
        "accuracy": accuracy,
        "sizes": sizes,
        **({"onnx": onnx} if onnx else {}),
        "load": "import starfish_cli; model = starfish_cli.load('this folder')",
    }
