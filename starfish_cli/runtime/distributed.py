"""Several processes under torchrun: PyTorch's own process group, sharding, and reductions.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # how healing spreads the student: ddp (replicated) or fsdp (sharded)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """The rank/world torchrun set in the environment (before any process group exists)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


# NCCL reduces only CUDA tensors: host-side values (counts, masks drawn on the CPU) go through gloo.
CUDA_BACKEND = "cpu:gloo,cuda:nccl"


def backend_for(use_cuda: bool, requested: str = "auto") -> str:
    """The process-group backend: `auto` is NCCL for CUDA tensors plus gloo for host tensors on a GPU
    machine, gloo on a CPU one; anything else is passed to `init_process_group` as it is."""
    if requested != "auto":
        return requested
    return CUDA_BACKEND if use_cuda else "gloo"


STRATEGIES = ("ddp", "fsdp")


def setup(device_name: str, backend: str = "auto", strategy: str = "ddp") -> World:
    """Join the process group torchrun describes (see `backend_for`); `strategy`: how healing spreads the student
    (the World returned carries it: the run passes it on, nothing here keeps it)."""
    world = launched_world()
    if world.active and not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend_for(use_cuda, backend))
    return replace(world, strategy=strategy)


def processes_per_machine() -> int:
    """Ranks that share this machine's host memory (torchrun's LOCAL_WORLD_SIZE)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def current() -> World:
    """This process's rank and the world's size, as torch's process group knows them (strategy: ddp's default)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if current().active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Make every rank hold rank 0's values (bool tensors travel as uint8: gloo has no bool)."""
    if not current().active:
        return
    for tensor in tensors:
        if tensor.dtype == torch.bool:
            carrier = tensor.to(torch.uint8)
            dist.broadcast(carrier, src=0)
            tensor.copy_(carrier.bool())
        else:
            dist.broadcast(tensor, src=0)


def shard_batches(dataset: torch.utils.data.Dataset, batch_size: int) -> torch.utils.data.Dataset:
    """This rank's batches of `dataset` as one process would batch it (batch i to rank i mod world size): the
    same batches give bit-identical per-batch statistics, so their sum over ranks is the one-process sum."""
    world = current()
    if not world.active:
        return dataset
    batches = range(world.rank, -(-len(dataset) // batch_size), world.size)
    return torch.utils.data.Subset(dataset, [i for b in batches for i in range(b * batch_size,
                                                                             min((b + 1) * batch_size, len(dataset)))])


def shard(dataset: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
    """This rank's share of a dataset, without the padding duplicates DistributedSampler adds."""
    world = current()
    if not world.active:
        return dataset
    if hasattr(dataset, "shard_for"):  # a stream: let `datasets` split it by node
        return dataset.shard_for(world.rank, world.size)
    return torch.utils.data.Subset(dataset, range(world.rank, len(dataset), world.size))
