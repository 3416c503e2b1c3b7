"""Plain data → the items starfish's steps read: `(index, input)` for calibration, `(index, input, target)`
for evaluation. A notebook holds tensors, a torch DataLoader or Dataset, or a `datasets.Dataset` of images."""

from typing import Any

import torch
from torch import nn

from starfish_cli.data.images import ImageTensors
from starfish_cli.models import structure_of
from starfish_cli.runtime.errors import StarfishError

ACCEPTED = ("a tensor of model inputs (images N×C×H×W, token ids N×L), an (inputs, targets) pair of tensors, "
            "a torch Dataset or DataLoader of starfish's items, or a datasets.Dataset with an image column")


class TensorItems(torch.utils.data.Dataset):
    """Items `(index, inputs[index])`, or `(index, inputs[index], targets[index])` when there are targets."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor | None = None):
        if targets is not None and len(targets) != len(inputs):
            raise StarfishError(f"{len(inputs)} inputs and {len(targets)} targets: give one target per input")
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        if self.targets is None:
            return index, self.inputs[index]
        return index, self.inputs[index], self.targets[index]


def calibration_items(data: Any, model: nn.Module, labels: bool = False) -> torch.utils.data.Dataset:
    """`data` as `(index, input)` items, or `(index, input, label)` for a healer that reads labels."""
    items = _items(data, model, targets=labels)
    _check_item(items, (3,) if labels else (2, 3), "calibration")  # labels beside the inputs are not read
    return items


def evaluation_items(data: Any, model: nn.Module) -> torch.utils.data.Dataset:
    """`data` as `(index, input, target)` items; a causal LM's targets are its own token windows."""
    items = _items(data, model, targets=True)
    _check_item(items, (3,), "evaluation")
    return items


def _items(data: Any, model: nn.Module, targets: bool) -> torch.utils.data.Dataset:
    text = structure_of(model).modality == "text"
    if isinstance(data, torch.Tensor):
        if targets and not text:
            raise StarfishError("a classifier's evaluation needs labels: give (images, labels) as a pair of tensors")
        return TensorItems(data, data if targets else None)  # a window's targets are its own next tokens
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(part, torch.Tensor) for part in data):
        return TensorItems(data[0], data[1] if targets else None)
    if isinstance(data, torch.utils.data.DataLoader):
        return data.dataset  # starfish batches the items itself (the healers shuffle them, seeded)
    if type(data).__module__.startswith("datasets.") and hasattr(data, "column_names"):
        return _hub_images(data, model, targets)
    if isinstance(data, torch.utils.data.Dataset):
        return data
    raise StarfishError(f"cannot read {type(data).__name__} as data: give {ACCEPTED}")


def _hub_images(split, model: nn.Module, labels: bool) -> torch.utils.data.Dataset:
    """A `datasets.Dataset` with an `image` column (and `label` for evaluation), preprocessed as the model's own."""
    structure = structure_of(model)
    if structure.modality != "images" or "image" not in split.column_names:
        raise StarfishError(f"a datasets.Dataset with columns {split.column_names} for a {structure.family} model: "
                            "only image datasets (an `image` column) are read; tokenize text into an N×L tensor of ids")
    preprocessing = structure.preprocessing()
    return ImageTensors(split, preprocessing["transform"], preprocessing["channels"], with_labels=labels)


def _check_item(items: torch.utils.data.Dataset, sizes: tuple[int, ...], use: str) -> None:
    """A clear error now for items of the wrong shape, not a collate error deep in a step."""
    if not hasattr(items, "__len__") or not len(items):
        return
    item = items[0]
    if not isinstance(item, tuple | list) or len(item) not in sizes:
        shape = "(index, input, target)" if sizes == (3,) else "(index, input)"
        raise StarfishError(f"{use} items must be {shape} tuples, and the first is "
                            f"{type(item).__name__}{f' of {len(item)}' if isinstance(item, tuple | list) else ''}: "
                            f"give {ACCEPTED}")
