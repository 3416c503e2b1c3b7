"""What every healer shares: fixed masks, the parameters it may train, and the optimization loop."""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from starfish_cli.runtime import distributed
from starfish_cli.pruning.masks import masks_digest
from starfish_cli.data.loader import loader
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.healing.resume import ResumeState
from starfish_cli.healing.sharded_resume import ShardedResumeState
from starfish_cli.healing.schedule import check_schedule, check_targets, pruned_fraction, split_steps, stage_masks
from starfish_cli.healing.states import collect_states
from starfish_cli.runtime.memory import available_host_bytes
from starfish_cli.runtime.progress import progress_bar
from starfish_cli.pruning.masks import apply_masks
from starfish_cli.healing.sharding import local_part, local_tensor, log_rank_bytes, sharded_copy, write_back
from starfish_cli.registry import Component, Range
from starfish_cli.runtime.device import autocast

log = logging.getLogger("starfish")


@dataclass(eq=False)
class GradualOptions:
    """The options of a healer that can heal gradually: intermediate sparsities (ascending, below the
    pruner's), and the fraction of the steps they take, split equally."""

    schedule: Sequence[Annotated[float, Range(0, 1, low_open=True, high_open=True)]] = ()
    schedule_share: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.5


@dataclass
class HealResult:
    steps: int = 0
    trained_parameters: list[str] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)  # gradual healing: sparsity and steps of each stage


class Healer(Component):
    """Optimizes a pruned student towards its dense teacher, masks fixed.

    `heal(student, teacher, masks, calibration, device)` modifies `student` in place;
    `calibration` is a torch Dataset of `(index, image)` items, or `(index, image, label)`
    for healers with `labels_used`.
    """

    labels_used: ClassVar[bool] = False  # True: the healer reads the calibration labels (reports say so)
    changes_weights: ClassVar[bool] = True  # False: the healed model is the pruned one, so evaluation runs it once
    student_states: ClassVar[tuple[str, ...]] = ()  # the internal states the loss reads from the student
    student_outputs: ClassVar[bool] = True  # whether the loss reads the student's outputs (logits); False skips its head

    def heal(self, student: nn.Module, teacher: nn.Module, masks: Mapping[str, torch.Tensor],
             calibration: torch.utils.data.Dataset, device: torch.device,
             precision: torch.dtype = torch.float32, state_file: Path | None = None) -> HealResult:
        """`state_file`: where a healer that trains keeps its resumable state (see `healing.resume`)."""
        raise NotImplementedError


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


def pruned_weight_names(model: nn.Module) -> list[str]:
    return [f"{name}.weight" for name in structure_of(model).prunable_layers()]


def block_bias_names(model: nn.Module) -> list[str]:
    """The biases of the prunable linears."""
    return [f"{name}.bias" for name, layer in structure_of(model).prunable_layers().items() if layer.bias is not None]


# what a healer's `train` option may name: each a function of the model giving parameter names
PARAMETER_GROUPS = {
    "pruned_weights": pruned_weight_names,
    "norms": lambda model: structure_of(model).block_norm_names(),
    "biases": block_bias_names,
}


def check_parameter_groups(groups) -> list[str]:
    """`healer.train` as a list: one or more groups, each once (their names are declared where it is)."""
    groups = [groups] if isinstance(groups, str) else list(groups)
    if not groups or len(set(groups)) < len(groups):
        raise StarfishError(f"healer.train={groups}: choose one or more of {', '.join(PARAMETER_GROUPS)}, each once")
    return groups


def parameter_names(model: nn.Module, groups: list[str]) -> list[str]:
    return [name for group in groups for name in PARAMETER_GROUPS[group](model)]


def norm_and_bias_names(model: nn.Module) -> list[str]:
    """LayerNorm weights and biases inside the blocks, and the biases of the prunable linears.

    (The final norm only feeds the head, so block-state alignment cannot train it.)
    """
    return parameter_names(model, ["norms", "biases"])


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


REPLAY_BUDGET = 0.05  # collated calibration batches may take this fraction of available host memory


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


@dataclass(eq=False)
class GradientHealer(Healer):
    """The shared recipe: Adam on `trainable_names`, cosine decay per step, masks fixed. The
    calibration images come in one seeded order that every epoch repeats, as in the reference
    code (which caches its calibration batches once); `reshuffle=True` draws a new order each epoch.

    Subclasses say what trains (`trainable_names`), which student states the loss needs
    (`student_states`), what the teacher provides (`teacher_targets`, computed once before the
    first step) and what is minimized (`objective`). Under torchrun the student runs in
    DistributedDataParallel and every rank takes batch_size / world images of each global batch.

    A `schedule` of intermediate sparsities heals gradually (`heal_gradually`): healers that offer it
    declare `GradualOptions` too; the others heal at the final masks only.
    """

    epochs: Annotated[int, Range(0)] = 10
    batch_size: Annotated[int, Range(1)] = 32
    lr: Annotated[float, Range(0, low_open=True)] = 6e-4
    min_lr: Annotated[float, Range(0)] = 1e-6  # the cosine decay's floor
    weight_decay: Annotated[float, Range(0)] = 0.0
    reshuffle: bool = False  # false: one seeded order every epoch (as the reference); true: a new one each epoch
    save_every: Annotated[int, Range(0)] = 200  # steps between saves of the resumable state; 0: never
    seed: int = 0
    schedule = ()  # not an option unless the healer declares GradualOptions
    schedule_share = 0.5

    def check(self) -> None:
        if self.min_lr > self.lr:
            raise StarfishError(f"healer.min_lr={self.min_lr} must be at most healer.lr={self.lr}")
        self.schedule = check_schedule(self.schedule)

    def trainable_names(self, student: nn.Module) -> list[str]:
        return pruned_weight_names(student)

    def teacher_targets(self, teacher: nn.Module, calibration, device: torch.device) -> Any:
        """What `loss` compares against (e.g. cached teacher states); None when the loss needs no teacher."""
        return None

    def objective(self, outputs: tuple, batch: tuple, targets: Any, device: torch.device) -> torch.Tensor:
        """`outputs` = the student's (logits, states) on `batch`; `targets` = `teacher_targets(…)`."""
        raise NotImplementedError

    def step_inputs(self, batch: tuple, device: torch.device) -> torch.Tensor:
        """The model inputs of one step: the batch's images on `device` (a healer may return a view of them)."""
        return batch[1].to(device, non_blocking=True)

    def heal(self, student, teacher, masks, calibration, device, precision=torch.float32, state_file=None):
        names = self.trainable_names(student)
        if self.schedule:  # before the teacher's targets are made: a schedule these masks cannot take fails at once
            check_targets(self.schedule, masks, {name: layer.weight.shape
                                                 for name, layer in structure_of(teacher).prunable_layers().items()})
        with autocast(device, precision):
            targets = self.teacher_targets(teacher, calibration, device)
        history: list[float] = []

        def loss_of_batch(batch, forward):
            images = self.step_inputs(batch, device)  # the student and `loss` (its teacher) see the same inputs
            return self.objective(forward(images), (batch[0], images, *batch[2:]), targets, device)

        forward = StudentForward(student, self.student_states, self.student_outputs)
        if self.schedule:
            return self.heal_gradually(student, teacher, masks, calibration, device, precision, names, loss_of_batch,
                                       forward, state_file)
        steps = self.optimize(student, names, masks, calibration, device, precision, history, loss_of_batch,
                              forward=forward, state_file=state_file)
        return HealResult(steps=steps, trained_parameters=names, loss_history=history)

    def heal_gradually(self, student, teacher, masks, calibration, device, precision, names, loss_of_batch, forward,
                       state_file) -> HealResult:
        """Heal at each sparsity of `schedule`, then at `masks`: the extra weights an intermediate stage
        keeps start from the dense values and are zeroed when a later stage prunes them. The stages share
        the budget of epochs × batches: `schedule_share` of it equally over the intermediate ones."""
        layers = structure_of(student).prunable_layers()
        dense = structure_of(teacher).prunable_layers()
        if state_file is not None and self.save_every:
            log.info("healer.schedule: gradual healing saves no resumable state (a killed run starts over)")
        by_layer = {name: stage_masks(mask, dense[name].weight.detach().to(mask.device), self.schedule)
                    for name, mask in masks.items()}
        stages = [{name: layer_masks[number] for name, layer_masks in by_layer.items()}
                  for number in range(len(self.schedule) + 1)]
        with torch.no_grad():  # stage 0's extra weights: the dense values; the pruner's kept values stay
            for name, mask in stages[0].items():
                weight = layers[name].weight
                restored = (mask & ~masks[name].bool()).to(weight.device)
                weight.copy_(torch.where(restored, dense[name].weight.to(weight.device, weight.dtype), weight))
        total = self.epochs * len(self.batches(calibration, device)[0])
        result = HealResult(trained_parameters=names)
        for number, (stage, steps) in enumerate(zip(stages, split_steps(total, len(self.schedule),
                                                                        self.schedule_share))):
            apply_masks({name: layers[name] for name in stage}, stage)  # +0.0 where this stage prunes
            sparsity = pruned_fraction(stage)
            log.info("healing stage %d of %d at sparsity %.4f: %d steps", number + 1, len(stages), sparsity, steps)
            result.steps += self.optimize(student, names, stage, calibration, device, precision, result.loss_history,
                                          loss_of_batch, f"healing stage {number + 1}/{len(stages)} "
                                          f"({self.registered_name})", forward=forward, steps=steps)
            result.stages.append({"sparsity": round(sparsity, 4), "steps": steps})
        return result

    def batches(self, calibration, device: torch.device):
        """One epoch's calibration batches (this rank's share under torchrun) and the sampler, if any."""
        world = distributed.current()
        if world.active:
            sampler = torch.utils.data.DistributedSampler(calibration, world.size, world.rank, shuffle=True,
                                                          seed=self.seed)
            return loader(calibration, max(1, self.batch_size // world.size), sampler=sampler, device=device), sampler
        return loader(calibration, self.batch_size, shuffle=True, seed=self.seed, reshuffle=self.reshuffle,
                      device=device), None

    @staticmethod
    def spread(model: nn.Module, names: list[str], forward: nn.Module | None, loss_of_batch, batches, device,
               precision) -> tuple[nn.Module, list[nn.Parameter], nn.Module | None]:
        """What the optimizer updates (the model, or under `dist_strategy=fsdp` its sharded copy), its trained
        parameters, and the forward to run: under torchrun DDP's or FSDP2's, else the one given."""
        parameters = train_only(model, names)
        world = distributed.current()
        if not world.active or forward is None:
            return model, parameters, forward
        if world.strategy == "fsdp":
            training = sharded_copy(model, device, precision, world.size)
            return (training, [parameter for parameter in training.parameters() if parameter.requires_grad],
                    StudentForward(training, forward.kinds, forward.with_outputs))
        # DDP waits for a gradient of every parameter it holds: hand it only those the loss reaches
        parameters = reaching_loss(parameters, loss_of_batch, next(iter(batches)), forward, device, precision)
        return model, parameters, DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda"
                                                          else None)

    def optimize(self, model: nn.Module, names: list[str], masks, calibration, device, precision: torch.dtype,
                 history: list[float], loss_of_batch, description: str | None = None,
                 forward: nn.Module | None = None, state_file: Path | None = None, steps: int | None = None) -> int:
        """Run the recipe over `calibration`; `loss_of_batch(batch, forward)`. Returns the steps taken:
        `steps` (the epochs' batch order, cut short where they are done), or epochs × batches.
        With `state_file`, the state is saved every `save_every` steps and resumed (under torchrun: sharded, DCP)."""
        world = distributed.current()
        batches, sampler = self.batches(calibration, device)
        if sampler is None and not self.reshuffle and len(calibration) and fits_in_memory(calibration):
            batches = ReplayedBatches(batches)
        training, parameters, forward = self.spread(model, names, forward, loss_of_batch, batches, device, precision)
        fixed = FixedMasks(training, masks)
        # foreach: one kernel per update over all tensors (bit-identical to the per-tensor loop)
        optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay, foreach=True)
        total = self.epochs * len(batches) if steps is None else steps
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1), eta_min=self.min_lr)
        trained = {name: parameter for name, parameter in training.named_parameters() if parameter.requires_grad}
        identity = [self.describe(), description, masks_digest(dict(masks)), len(calibration),
                    # shapes too: a structurally pruned model has no masks to tell it apart
                    sorted((name, list(p.shape)) for name, p in trained.items())]
        resume = ShardedResumeState(state_file, self.save_every, identity, training) if world.active \
            else ResumeState(state_file, self.save_every, identity)
        step = resume.resume(trained, optimizer, scheduler, history)
        training.eval()  # no dropout/drop-path: the targets are deterministic
        try:
            with progress_bar(description or f"healing ({self.registered_name})", total) as advance:
                done = 0
                for epoch in range(math.ceil(total / max(len(batches), 1))):
                    if sampler is not None and self.reshuffle:
                        sampler.set_epoch(epoch)
                    # a resumed run walks the same order up to its step; `steps` may end inside an epoch
                    for batch in islice(batches, total - epoch * len(batches)):
                        done += 1
                        if done <= step:
                            advance()
                            continue
                        with autocast(device, precision):
                            loss = loss_of_batch(batch, forward)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        scheduler.step()
                        fixed.reapply()
                        if world.active and done == step + 1:
                            log_rank_bytes(parameters, optimizer, world.strategy)
                        value = float(distributed.all_reduce_sum(loss.detach().clone())) / world.size
                        if not math.isfinite(value):
                            raise StarfishError(f"healing diverged (loss {value}): lower healer.lr")
                        history.append(value)
                        advance(loss=value)
                        if resume.due(done, total):
                            resume.save(done, trained, optimizer, scheduler, history)
            resume.remove()  # finished: the healed weights are the result
            if training is not model:
                write_back(training, model, device)
        finally:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        return total
