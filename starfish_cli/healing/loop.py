"""The one training loop every gradient healer runs, shaped as a recipe: set up (what trains, spread over the
ranks, Adam with a cosine decay per step, the resumable state) → loop (a pure loss per batch, the masks
re-applied after every step) → save (the trained weights written back, the resumable state removed).

A healer says what trains and what the loss is (`Job`); how it is optimized comes from its declared options
(`Settings`); the distributed world is passed in, never read from module state."""

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from starfish_cli.data.loader import loader
from starfish_cli.healing.holdout import EarlyStopping, split_holdout
from starfish_cli.healing.resume import ResumeState
from starfish_cli.healing.sharded_resume import ShardedResumeState
from starfish_cli.healing.sharding import local_part, local_tensor, log_rank_bytes, sharded_copy, write_back
from starfish_cli.healing.states import collect_states
from starfish_cli.models import structure_of
from starfish_cli.pruning.masks import masks_digest
from starfish_cli.runtime import distributed
from starfish_cli.runtime.device import autocast
from starfish_cli.runtime.distributed import World
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.runtime.memory import available_host_bytes
from starfish_cli.runtime.progress import progress_bar

log = logging.getLogger("starfish")

REPLAY_BUDGET = 0.05  # collated calibration batches may take this fraction of available host memory


@dataclass(frozen=True)
class Settings:
    """How the loop optimizes: a gradient healer's declared options. `identity`: what else determines the
    trajectory (the healer's options), so that a resumable state of another configuration is not resumed."""

    epochs: int
    batch_size: int
    lr: float
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    reshuffle: bool = False
    save_every: int = 0
    seed: int = 0
    holdout: float = 0.0  # the fraction of the calibration items held out to choose the epoch (healing.holdout)
    patience: int = 0  # epochs without a better held-out loss before stopping; 0: run every epoch
    identity: Any = None


@dataclass
class Job:
    """What one loop trains: the parameters `names` of `model`, on `calibration`'s batches, minimizing
    `loss(batch, forward)`, with `masks` kept; `steps` ends the epochs' batch order early (gradual healing)."""

    model: nn.Module
    names: list[str]
    masks: Mapping[str, torch.Tensor]
    calibration: torch.utils.data.Dataset
    loss: Callable[[Any, Any], torch.Tensor]
    forward: nn.Module | None = None
    steps: int | None = None
    description: str = "healing"


def train(job: Job, settings: Settings, world: World, device: torch.device, precision: torch.dtype,
          history: list[float], state_file: Path | None = None, selection: list[dict] | None = None) -> int:
    """Run `job` under `settings`; the loss of every step is appended to `history`. Returns the steps taken.
    With `state_file`, the state is saved every `save_every` steps and resumed (under torchrun: sharded, DCP).
    With `settings.holdout`, the weights of the epoch with the best held-out loss are kept, and what was measured
    is appended to `selection`."""
    fit, held_out = split_holdout(job.calibration, settings.holdout, settings.seed, world.size)
    batches, sampler = calibration_batches(fit, settings, world, device)
    training, parameters, forward = spread(job, batches, world, device, precision)
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay,
                                 foreach=True)  # one kernel per update over all tensors, bit-identical to the loop
    total = settings.epochs * len(batches) if job.steps is None else job.steps
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1), eta_min=settings.min_lr)
    trained = {name: parameter for name, parameter in training.named_parameters() if parameter.requires_grad}
    identity = [settings.identity, job.description, masks_digest(dict(job.masks)), len(fit),
                sorted((name, list(p.shape)) for name, p in trained.items())]  # a sliced model has no masks to tell
    resume = ShardedResumeState(state_file, settings.save_every, identity, training) if world.active \
        else ResumeState(state_file, settings.save_every, identity)
    step = resume.resume(trained, optimizer, scheduler, history)
    loop = Loop(forward, job.loss, optimizer, scheduler, FixedMasks(training, job.masks), world, device, precision)
    training.eval()  # no dropout/drop-path: the targets are deterministic
    stopping = held_out and EarlyStopping(held_out, job.loss, forward, trained, settings.batch_size,
                                          settings.patience, device, precision, job.description)
    per_epoch = max(len(batches), 1)
    try:
        with progress_bar(job.description, total) as advance:
            done = 0
            if stopping:  # a resumed run measures from its step on
                stopping.observe(math.ceil(step / per_epoch))
            for epoch, batch in epoch_batches(batches, sampler, settings.reshuffle, total):
                done += 1
                if done > step:  # a resumed run walks the same order up to its step
                    history.append(loop.step(batch, log_bytes=world.active and done == step + 1,
                                             parameters=parameters))
                    if resume.due(done, total):
                        resume.save(done, trained, optimizer, scheduler, history)
                advance(**({"loss": history[-1]} if done > step else {}))
                if stopping and done > step and (done % per_epoch == 0 or done == total) \
                        and stopping.observe(math.ceil(done / per_epoch)):
                    break  # `patience` epochs without a better held-out loss
        if stopping:
            stopping.finish(selection)
        resume.remove()  # finished: the healed weights are the result
        if training is not job.model:
            write_back(training, job.model, device)
    finally:
        for parameter in job.model.parameters():
            parameter.requires_grad_(False)
    return done


@dataclass
class Loop:
    """One optimizer step: the loss of a batch, backward, Adam, the schedule, the masks re-applied."""

    forward: nn.Module | None
    loss: Callable[[Any, Any], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    masks: "FixedMasks"
    world: World
    device: torch.device
    precision: torch.dtype

    def step(self, batch, log_bytes: bool = False, parameters=()) -> float:
        with autocast(self.device, self.precision):
            loss = self.loss(batch, self.forward)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.masks.reapply()
        if log_bytes:
            log_rank_bytes(parameters, self.optimizer, self.world.strategy)
        value = float(distributed.all_reduce_sum(loss.detach().clone())) / self.world.size
        if not math.isfinite(value):
            raise StarfishError(f"healing diverged (loss {value}): lower healer.lr")
        return value


def epoch_batches(batches, sampler, reshuffle: bool, total: int):
    """(epoch, batch) over as many epochs as `total` steps take; the last may end inside its epoch."""
    for epoch in range(math.ceil(total / max(len(batches), 1))):
        if sampler is not None and reshuffle:
            sampler.set_epoch(epoch)
        for batch in islice(batches, total - epoch * len(batches)):
            yield epoch, batch


def calibration_batches(calibration, settings: Settings, world: World, device: torch.device):
    """One epoch's batches (this rank's share under torchrun) and the sampler, if any; one process with one
    order every epoch replays the collated batches when they fit."""
    if world.active:
        sampler = torch.utils.data.DistributedSampler(calibration, world.size, world.rank, shuffle=True,
                                                      seed=settings.seed)
        return loader(calibration, max(1, settings.batch_size // world.size), sampler=sampler, device=device), sampler
    batches = loader(calibration, settings.batch_size, shuffle=True, seed=settings.seed, reshuffle=settings.reshuffle,
                     device=device)
    if not settings.reshuffle and len(calibration) and fits_in_memory(calibration):
        batches = ReplayedBatches(batches)
    return batches, None


def spread(job: Job, batches, world: World, device, precision) -> tuple[nn.Module, list[nn.Parameter], Any]:
    """What the optimizer updates (the model, or under `dist_strategy=fsdp` its sharded copy), its trained
    parameters, and the forward to run: under torchrun DDP's or FSDP2's, else the job's."""
    parameters = train_only(job.model, job.names)
    forward = job.forward
    if not world.active or forward is None:
        return job.model, parameters, forward
    if world.strategy == "fsdp":
        training = sharded_copy(job.model, device, precision, world.size)
        return (training, [parameter for parameter in training.parameters() if parameter.requires_grad],
                StudentForward(training, forward.kinds, forward.with_outputs))
    # DDP waits for a gradient of every parameter it holds: hand it only those the loss reaches
    parameters = reaching_loss(parameters, job.loss, next(iter(batches)), forward, device, precision)
    return job.model, parameters, DistributedDataParallel(forward, device_ids=[device.index]
                                                          if device.type == "cuda" else None)


def train_only(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """Freeze every parameter of `model` except those named; returns the trainable ones."""
    wanted = set(names)
    missing = wanted - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"no such parameters: {sorted(missing)}")
    parameters = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in wanted)
        if name in wanted:
            parameters.append(parameter)
    return parameters


class FixedMasks:
    """Keeps pruned weights exactly zero by re-masking after every step.

    Their gradients are left as they are: Adam (and its weight decay) updates each entry from its
    own gradient alone, so a pruned entry's update never reaches a kept one, and re-masking zeroes
    it before the next forward. The kept weights get the same values as with masked gradients.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        layers = structure_of(model).prunable_layers()
        # a weight sharded over the ranks (dist_strategy=fsdp) is re-masked in its local shard
        self._pairs = [(layers[name].weight, local_part(~mask.to(layers[name].weight.device).bool(), layers[name].weight))
                       for name, mask in masks.items()]

    @torch.no_grad()
    def reapply(self) -> None:
        for weight, pruned in self._pairs:  # +0.0, not the −0.0 a product gives: an export restores the bits
            local_tensor(weight).masked_fill_(pruned, 0.0)


def fits_in_memory(calibration) -> bool:
    """Whether every calibration item's tensors, collated, fit REPLAY_BUDGET of available host memory."""
    first = calibration[0]
    item_bytes = sum(part.nbytes for part in first if isinstance(part, torch.Tensor))
    return len(calibration) * item_bytes <= REPLAY_BUDGET * available_host_bytes()


class ReplayedBatches:
    """The batches of a loader whose order every epoch repeats, collated once and then replayed
    (as the reference code caches its calibration batches): later epochs skip the loader."""

    def __init__(self, batches: torch.utils.data.DataLoader):
        self._loader, self._kept = batches, None

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        if self._kept is not None:
            yield from self._kept
            return
        kept = []
        for batch in self._loader:
            kept.append(batch)
            yield batch
        self._kept = kept  # only a whole epoch is replayed


def reaching_loss(parameters: list[nn.Parameter], loss_of_batch, batch, forward, device, precision) -> list[nn.Parameter]:
    """The parameters that get a gradient from the loss on `batch`; the others are frozen (e.g. the
    last block's MLP when only attention outputs are aligned). Training is the same: Adam leaves a
    parameter without a gradient as it is."""
    with autocast(device, precision):
        loss = loss_of_batch(batch, forward)
    loss.backward()
    reached = [parameter for parameter in parameters if parameter.grad is not None]
    for parameter in parameters:
        parameter.requires_grad_(parameter.grad is not None)
        parameter.grad = None
    if len(reached) < len(parameters):
        log.info("%d of %d trainable tensors get no gradient from this loss: left as they are",
                 len(parameters) - len(reached), len(parameters))
    return reached


class StudentForward(nn.Module):
    """`images → (logits, states)` as a module's forward, so DistributedDataParallel can wrap it;
    logits None when `with_outputs` is False."""

    def __init__(self, model: nn.Module, kinds: tuple[str, ...], with_outputs: bool = True):
        super().__init__()
        self.model, self.kinds, self.with_outputs = model, kinds, with_outputs

    def forward(self, images: torch.Tensor):
        if not self.kinds:
            return structure_of(self.model).outputs(images), []
        return collect_states(self.model, images, self.kinds, self.with_outputs)
