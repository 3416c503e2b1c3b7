"""Healing with the student sharded over the ranks (`dist_strategy=fsdp`): PyTorch's FSDP2 (`fully_shard`)
per block, so each rank holds 1/N of the blocks' parameters, their gradients and Adam's moments; the full
student waits on the meta device and gets the healed weights back at the end."""

import copy
import logging

import torch
from torch import nn

from starfish_cli.models import structure_of
from starfish_cli.runtime.errors import StarfishError

log = logging.getLogger("starfish")


def sharded_copy(model: nn.Module, device: torch.device, precision: torch.dtype, world_size: int) -> nn.Module:
    """A copy of `model` (its requires_grad flags as set) with every block sharded by FSDP2 over the ranks.
    `model` itself is emptied to the meta device meanwhile."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    training = copy.deepcopy(model)
    mesh = init_device_mesh(device.type, (world_size,))
    # bf16 compute with fp32 master weights and fp32 gradient reduction on GPUs, as the autocast path
    policy = MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32) \
        if device.type == "cuda" and precision != torch.float32 else MixedPrecisionPolicy()
    structure = structure_of(training)
    inside = {id(parameter) for block in structure.blocks for parameter in block.parameters()}
    outside = [name for name, parameter in training.named_parameters()
               if parameter.requires_grad and id(parameter) not in inside]
    if outside:  # their gradients would not be reduced over the ranks
        raise StarfishError(f"dist_strategy=fsdp trains the blocks' parameters, and {outside[0]} is outside them: "
                            "use dist_strategy=ddp")
    # each block its own unit; the rest (embeddings, head: frozen) stays whole on every rank, as the families
    # run it piece by piece (a root unit's gather would only run in the model's own forward)
    for block in structure.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    model.to_empty(device="meta")  # the full weights are in the shards now: free them until the end
    return training


def local_part(mask: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """This rank's part of a full-size `mask` for a parameter sharded as a DTensor (the mask itself otherwise)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(parameter, DTensor):
        return mask
    return distribute_tensor(mask, parameter.device_mesh, parameter.placements).to_local()


def local_tensor(parameter: torch.Tensor) -> torch.Tensor:
    """The values this rank holds of a parameter (its shard of a DTensor), to update in place."""
    from torch.distributed.tensor import DTensor

    return parameter.to_local() if isinstance(parameter, DTensor) else parameter


@torch.no_grad()
def write_back(training: nn.Module, model: nn.Module, device: torch.device) -> None:
    """The healed weights (gathered from every rank's shards) and the buffers into `model`, on `device`."""
    from torch.distributed.tensor import DTensor

    model.to_empty(device=device)
    parameters = dict(training.named_parameters())
    for name, parameter in model.named_parameters():
        value = parameters[name]
        parameter.copy_(value.full_tensor() if isinstance(value, DTensor) else value)
    buffers = dict(training.named_buffers())
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])


def log_rank_bytes(parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer, strategy: str) -> None:
    """Log the trained parameter and optimizer state bytes this rank holds: its shards under FSDP2, all under DDP."""
    held = sum(local_tensor(parameter).nbytes for parameter in parameters)
    state = sum(local_tensor(value).nbytes for entry in optimizer.state.values() for value in entry.values()
                if isinstance(value, torch.Tensor) and value.dim() > 0)
    log.info("this rank holds %.2f MB of trained parameters and %.2f MB of optimizer state (dist_strategy=%s)",
             held / 2**20, state / 2**20, strategy)
