"""How fast and how big models are, measured on the same images in one process: images/s at
chosen batch sizes (interleaved rounds, the fastest of each), multiply-accumulates per image, parameter counts,
and on CUDA the 2:4 semi-structured kernels where a model's shapes allow them."""

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from starfish_cli.models import structure_of
from starfish_cli.models.outputs import outputs_by_chunks, per_token
from starfish_cli.pruning.masks import fits_nm
from starfish_cli.runtime.device import autocast
from starfish_cli.runtime.errors import first_line

ROUNDS = 3  # interleaved rounds per batch size; each model's fastest round is reported (the least disturbed)
SECONDS_PER_ROUND = 0.15  # each model runs batches until this much time has passed in a round


@torch.no_grad()
def macs_per_image(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on one input (matmuls, convs, attention), as executed:
    zeros in a weight matrix are multiplied like any other value."""
    with FlopCounterMode(display=False) as counter:
        model(example[:1])
    return int(counter.get_total_flops()) // 2


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters, those not zero, and the bytes of its weights as a checkpoint holds them (every tensor of the
    state dict once: a tied head is one)."""
    parameters = list(model.parameters())
    tensors = {tensor.data_ptr(): tensor for tensor in model.state_dict().values()}.values()
    return {"parameters": sum(p.numel() for p in parameters),
            "nonzero_parameters": sum(int(torch.count_nonzero(p)) for p in parameters),
            "weight_bytes": sum(tensor.numel() * tensor.element_size() for tensor in tensors)}


def _tile(images: torch.Tensor, count: int) -> torch.Tensor:
    """`count` inputs from `images`, repeated when there are fewer (speed does not depend on the pixels)."""
    repeats = -(-count // len(images))
    return images.repeat(repeats, *([1] * (images.dim() - 1)))[:count]


def _run(model: nn.Module, inputs: torch.Tensor) -> None:
    """One forward pass; a causal LM's head over a chunk of tokens at a time, as evaluation runs it (the same
    computation, without a batch of vocabulary-wide logits at once)."""
    structure = structure_of(model)
    if not per_token(structure):
        model(inputs)
        return
    for _outputs in outputs_by_chunks(structure, inputs):
        pass


def _forward(model: nn.Module, inputs: torch.Tensor, device: torch.device, precision: torch.dtype) -> None:
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:  # a model held in half precision (2:4 kernels) takes inputs in it, no autocast
        _run(model, inputs.to(dtype))
        return
    with autocast(device, precision):
        _run(model, inputs)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def images_per_second(models: Mapping[str, nn.Module], images: torch.Tensor, batch_sizes: Sequence[int],
                      device: torch.device, precision: torch.dtype = torch.float32,
                      rounds: int = ROUNDS, seconds_per_round: float = SECONDS_PER_ROUND) -> dict[str, dict[int, float]]:
    """Images/s of every model at every batch size, on the same inputs. The models take turns round by
    round (in a rotated order), so a slow moment of the machine hits all of them alike."""
    results: dict[str, dict[int, float]] = {name: {} for name in models}
    for batch_size in batch_sizes:
        inputs = _tile(images, batch_size).to(device)
        for model in models.values():  # warm-up: allocator, kernels, lazy initialisation (a few inputs do)
            _forward(model, inputs[:8], device, precision)
        samples: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                done, started = 0, time.perf_counter()
                _synchronize(device)
                while True:
                    _forward(models[name], inputs, device, precision)
                    done += batch_size
                    _synchronize(device)
                    elapsed = time.perf_counter() - started
                    if elapsed >= seconds_per_round:
                        break
                samples[name].append(done / elapsed)
        for name in models:
            results[name][batch_size] = max(samples[name])
    return results


def semi_structured_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> tuple[nn.Module | None, str]:
    """A copy of `model` in `dtype` whose 2:4-sparse prunable weights run on PyTorch's semi-structured
    sparse kernels (`to_sparse_semi_structured`, CUDA only; rows and columns multiples of 64), and how
    many layers could take them; (None, why not) where none could."""
    weights = [layer.weight for layer in structure_of(model).prunable_layers().values()]
    device = weights[0].device if weights else torch.device("cpu")
    if device.type != "cuda":
        return None, "2:4 kernels need a CUDA device"
    from torch.sparse import to_sparse_semi_structured

    sparse_model = copy.deepcopy(model).to(dtype)
    layers = structure_of(sparse_model).prunable_layers()
    converted = 0
    for layer in layers.values():
        rows, columns = layer.weight.shape
        if rows % 64 or columns % 64 or not fits_nm(layer.weight != 0, 2, 4):
            continue
        try:
            layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError) as error:  # this GPU or build has no such kernels
            return None, f"to_sparse_semi_structured failed: {first_line(error, 120)}"
        converted += 1
    if not converted:
        return None, "no prunable layer is 2:4 with rows and columns multiples of 64"
    return sparse_model, f"{converted} of {len(layers)} layers on 2:4 kernels"


def measure_speed(models: Mapping[str, nn.Module], images: torch.Tensor, batch_sizes: Sequence[int],
                  device: torch.device, precision: torch.dtype, reference: str = "dense",
                  semi_structured: bool = False) -> dict[str, Any]:
    """The report's `speed` section: per model, parameters, MACs per image, images/s at each batch size
    and its ratio to `reference`'s; with `semi_structured` on CUDA, the healed model on 2:4 kernels too."""
    batch_sizes = sorted(set(int(b) for b in batch_sizes))
    timed = dict(models)
    notes = {}
    if semi_structured:
        sparse_model, note = semi_structured_copy(models["healed"])
        notes["healed_2:4_kernels"] = note
        if sparse_model is not None:
            timed["healed_2:4_kernels"] = sparse_model
    speeds = images_per_second(timed, images, batch_sizes, device, precision)
    entries = {}
    for name, model in timed.items():
        entry: dict[str, Any] = {**parameter_counts(model)}
        if next(model.parameters()).dtype == torch.float32:  # the 2:4 copy executes the same MACs as healed
            entry["macs_per_image"] = macs_per_image(model, images.to(device))
        entry["images_per_second"] = {str(b): speeds[name][b] for b in batch_sizes}
        entry["vs_dense"] = {str(b): speeds[name][b] / speeds[reference][b] for b in batch_sizes}
        entries[name] = entry
    return {"device": str(device), "batch_sizes": batch_sizes, "models": entries, **({"notes": notes} if notes else {})}
