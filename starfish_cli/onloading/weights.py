"""A causal LM that is never whole in memory: its skeleton on the meta device (buffers real), each tensor read
from the model's safetensors shards when its module is needed and dropped after, and the results written back
shard by shard as a folder `AutoModelForCausalLM.from_pretrained` loads."""

import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from starfish_cli.runtime.atomic import write_atomically, write_text_atomically
from starfish_cli.runtime.errors import StarfishError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FOLDER_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


class ShardedWeights:
    """Reads tensors by name from a save_pretrained folder's safetensors (one file or an index of shards),
    counting the bytes read."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, "pt") as handle:
                weight_map = {name: SINGLE for name in handle.keys()}
        else:
            raise StarfishError(f"{self.folder} has no {SINGLE} or {INDEX}: layer-by-layer onloading reads "
                                "safetensors folders (save_pretrained(safe_serialization=True))")
        self.file_of = weight_map
        self.bytes_read = 0

    def numel(self) -> int:
        """Values in the checkpoint, from the files' headers alone."""
        total = 0
        for file in sorted(set(self.file_of.values())):
            with safe_open(self.folder / file, "pt") as handle:
                for name in handle.keys():
                    total += math.prod(handle.get_slice(name).get_shape())
        return total

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.file_of[name], []).append(name)
        tensors = {}
        for file, wanted in by_file.items():
            with safe_open(self.folder / file, "pt") as handle:
                for name in wanted:
                    tensors[name] = handle.get_tensor(name)
                    self.bytes_read += tensors[name].nbytes
        return tensors


def skeleton(folder: Path) -> nn.Module:
    """The model of a save_pretrained folder with every parameter on the meta device (its buffers, e.g. rotary
    frequencies, real): built from the config alone, nothing read from the weights."""
    import transformers
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    conv1d = [name for name, module in model.named_modules() if isinstance(module, transformers.pytorch_utils.Conv1D)]
    if conv1d:  # their checkpoint tensors are transposed relative to the nn.Linear starfish prunes
        raise StarfishError(f"{type(model).__name__} keeps Conv1D layers ({conv1d[0]}): layer-by-layer onloading "
                            "reads nn.Linear weights only; give memory_budget room for the whole model")
    return model.eval()


def onload(module: nn.Module, prefix: str, weights: ShardedWeights, device: torch.device) -> None:
    """Give every parameter of `module` (named `prefix`.… in the checkpoint) its stored value on `device`, fp32."""
    from accelerate.utils import set_module_tensor_to_device

    names = [name for name, _ in module.named_parameters()]
    stored = {f"{prefix}{name}" for name in names}
    missing = sorted(name for name in stored if name not in weights)
    if missing:
        raise StarfishError(f"{weights.folder} has no tensor {missing[0]} (the model's own name for it): "
                            "layer-by-layer onloading needs the checkpoint's names to be the model's")
    values = weights.read(stored)
    for name in names:
        set_module_tensor_to_device(module, name, device, value=values[f"{prefix}{name}"].float())


def offload(module: nn.Module) -> None:
    """Back to the meta device: the module's weights are freed."""
    from accelerate.utils import set_module_tensor_to_device

    for name, _ in list(module.named_parameters()):
        set_module_tensor_to_device(module, name, "meta")


def outside_layers(model: nn.Module, layers_name: str) -> list[tuple[str, nn.Module]]:
    """The modules holding the parameters outside the decoder layers (embeddings, final norm, head), by name."""
    owners = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        if not name.startswith(f"{layers_name}."):
            owners[name.rsplit(".", 1)[0]] = model.get_submodule(name.rsplit(".", 1)[0])
    return list(owners.items())


class ShardWriter:
    """Writes a folder as save_pretrained would: each call one shard, then the index, config and tokenizer
    copied from the source folder. Every file is written atomically; `bytes_written` counts tensor bytes."""

    def __init__(self, folder: Path, source: Path, shards: int, dtype: torch.dtype = torch.float32):
        self.folder, self.source, self.shards, self.dtype = Path(folder), Path(source), shards, dtype
        self.weight_map: dict[str, str] = {}
        self.bytes_written = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, number: int, tensors: dict[str, torch.Tensor]) -> None:
        name = f"model-{number + 1:05d}-of-{self.shards:05d}.safetensors"
        plain = {key: value.detach().to("cpu", self.dtype).contiguous() for key, value in tensors.items()}
        write_atomically(self.folder / name, lambda tmp: save_file(plain, tmp, metadata={"format": "pt"}))
        self.weight_map.update(dict.fromkeys(plain, name))
        self.bytes_written += sum(value.nbytes for value in plain.values())

    def finish(self) -> None:
        if len(self.weight_map) and len({*self.weight_map.values()}) != self.shards:
            raise AssertionError(f"{self.shards} shards announced, {len({*self.weight_map.values()})} written")
        write_text_atomically(self.folder / INDEX, json.dumps(
            {"metadata": {"total_size": self.bytes_written}, "weight_map": dict(sorted(self.weight_map.items()))},
            indent=2))
        for file in FOLDER_FILES:
            if (self.source / file).is_file():
                shutil.copyfile(self.source / file, self.folder / file)


class RunWriters:
    """What a layer-by-layer pass writes, layer by layer: the healed folder, its keep-masks (`healed`/masks) and,
    when healing changes the weights, the pruned folder. The embeddings, final norm and head are the last shard."""

    def __init__(self, source: Path, blocks: int, healed: Path, pruned: Path | None):
        self.blocks = blocks
        self.folders = {"healed": ShardWriter(healed, source, blocks + 1),
                        "masks": ShardWriter(Path(healed) / "masks", source, blocks, dtype=torch.bool)}
        if pruned is not None:
            self.folders["pruned"] = ShardWriter(pruned, source, blocks + 1)

    def outside(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("healed", "pruned"):
            if name in self.folders:
                self.folders[name].write(self.blocks, tensors)

    def pruned(self, number: int, tensors: dict[str, torch.Tensor]) -> None:
        if "pruned" in self.folders:
            self.folders["pruned"].write(number, tensors)

    def healed(self, number: int, tensors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        self.folders["healed"].write(number, tensors)
        self.folders["masks"].write(number, {f"{name}.weight": mask for name, mask in masks.items()})

    def finish(self) -> int:
        """The index, config and tokenizer of each folder; the tensor bytes written in all."""
        for writer in self.folders.values():
            writer.finish()
        return sum(writer.bytes_written for writer in self.folders.values())
