"""What every healer shares: the interface, the parameters it may train, and the gradient healers' declared
options. The loop they run is `healing.loop`; block-wise and gradual healing are `healing.blockwise` and
`healing.gradual`."""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from starfish_cli.healing.blockwise import heal_blockwise
from starfish_cli.healing.gradual import heal_gradually
from starfish_cli.healing.loop import Job, Settings, StudentForward, train
from starfish_cli.healing.schedule import check_schedule, check_targets
from starfish_cli.models import structure_of
from starfish_cli.registry import Component, Range
from starfish_cli.runtime import distributed
from starfish_cli.runtime.device import autocast
from starfish_cli.runtime.distributed import World
from starfish_cli.runtime.errors import StarfishError

log = logging.getLogger("starfish")


@dataclass
class HealResult:
    steps: int = 0
    trained_parameters: list[str] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)  # gradual healing: sparsity and steps of each stage
    holdout: list[dict[str, Any]] = field(default_factory=list)  # each loop's held-out losses and the epoch kept


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
             precision: torch.dtype = torch.float32, state_file: Path | None = None,
             world: World | None = None) -> HealResult:
        """`state_file`: where a healer that trains keeps its resumable state (see `healing.resume`); `world`: the
        torchrun processes and how they share the student (default: the process group's, ddp)."""
        raise NotImplementedError


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




@dataclass(eq=False)
class GradientHealer(Healer):
    """The shared recipe: Adam on `trainable_names`, cosine decay per step, masks fixed (`healing.loop`). The
    calibration images come in one seeded order that every epoch repeats, as in the reference code (which
    caches its calibration batches once); `reshuffle=True` draws a new order each epoch.

    Subclasses say what trains (`trainable_names`), which student states the loss needs (`student_states`),
    what the teacher provides (`teacher_targets`, computed once before the first step) and what is minimized
    (`objective`). Under torchrun the student runs in DistributedDataParallel (or FSDP2) and every rank takes
    batch_size / world images of each global batch. A healer that declares `mode` may heal block by block
    (`healing.blockwise`); one that declares a `schedule` (GradualHealer), gradually (`healing.gradual`)."""

    epochs: Annotated[int, Range(0)] = 10
    batch_size: Annotated[int, Range(1)] = 32
    lr: Annotated[float, Range(0, low_open=True)] = 6e-4
    min_lr: Annotated[float, Range(0)] = 1e-6  # the cosine decay's floor
    weight_decay: Annotated[float, Range(0)] = 0.0
    reshuffle: bool = False  # false: one seeded order every epoch (as the reference); true: a new one each epoch
    save_every: Annotated[int, Range(0)] = 200  # steps between saves of the resumable state; 0: never
    # a fraction of the calibration items held out: the epoch with the best loss on them is kept (healing.holdout)
    holdout: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    patience: Annotated[int, Range(0)] = 0  # epochs without a better held-out loss before stopping; 0: all epochs
    seed: int = 0
    mode = "end_to_end"  # not an option unless the healer declares it
    schedule = ()  # not an option unless the healer is a GradualHealer
    schedule_share = 0.5

    def check(self) -> None:
        if self.min_lr > self.lr:
            raise StarfishError(f"healer.min_lr={self.min_lr} must be at most healer.lr={self.lr}")
        if self.patience and not self.holdout:
            raise StarfishError(f"healer.patience={self.patience} counts epochs of the held-out loss: set "
                                "healer.holdout (e.g. 0.125) or patience=0")

    def settings(self) -> Settings:
        return Settings(self.epochs, self.batch_size, self.lr, self.min_lr, self.weight_decay, self.reshuffle,
                        self.save_every, self.seed, self.holdout, self.patience, identity=self.describe())

    def trainable_names(self, student: nn.Module) -> list[str]:
        return pruned_weight_names(student)

    def teacher_targets(self, teacher: nn.Module, calibration, device: torch.device, blocks: list[int]) -> Any:
        """What `loss` compares against (e.g. cached teacher states); None when the loss needs no teacher."""
        return None

    def objective(self, outputs: tuple, batch: tuple, targets: Any, device: torch.device) -> torch.Tensor:
        """`outputs` = the student's (logits, states) on `batch`; `targets` = `teacher_targets(…)`."""
        raise NotImplementedError

    def step_inputs(self, batch: tuple, device: torch.device) -> torch.Tensor:
        """The model inputs of one step: the batch's images on `device` (a healer may return a view of them)."""
        return batch[1].to(device, non_blocking=True)

    def loss_of(self, targets: Any, device: torch.device):
        """The pure loss of a batch under a forward: what the loop minimizes."""
        def loss(batch, forward):
            images = self.step_inputs(batch, device)  # the student and the teacher's targets see the same inputs
            return self.objective(forward(images), (batch[0], images, *batch[2:]), targets, device)
        return loss

    def heal(self, student, teacher, masks, calibration, device, precision=torch.float32, state_file=None,
             world=None):
        world = world or distributed.current()
        result = HealResult(trained_parameters=self.trainable_names(student))
        if self.mode == "blockwise":
            heal_blockwise(self, student, teacher, masks, calibration, device, precision, world, result)
            return result
        if self.schedule:  # before the teacher's targets are made: a schedule these masks cannot take fails at once
            check_targets(self.schedule, masks, {name: layer.weight.shape
                                                 for name, layer in structure_of(teacher).prunable_layers().items()})
        with autocast(device, precision):
            # a student without some of the dense blocks is aligned with the ones it kept
            targets = self.teacher_targets(teacher, calibration, device, structure_of(student).block_sources())
        job = Job(student, result.trained_parameters, masks, calibration, self.loss_of(targets, device),
                  StudentForward(student, self.student_states, self.student_outputs),
                  description=f"healing ({self.registered_name})")
        if self.schedule:
            heal_gradually(job, self.settings(), self.schedule, self.schedule_share, teacher, world, device,
                           precision, result, state_file)
        else:
            result.steps = train(job, self.settings(), world, device, precision, result.loss_history, state_file,
                                 result.holdout)
        return result


@dataclass(eq=False)
class GradualHealer(GradientHealer):
    """A gradient healer that can heal gradually: intermediate sparsities (ascending, below the pruner's), and
    the fraction of the steps they take, split equally (`healing.gradual`)."""

    schedule: Sequence[Annotated[float, Range(0, 1, low_open=True, high_open=True)]] = ()
    schedule_share: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.5

    def check(self) -> None:
        super().check()
        self.schedule = check_schedule(self.schedule)
        if self.schedule and self.holdout:
            raise StarfishError("healer.holdout chooses an epoch at fixed masks, but healer.schedule changes them: "
                                "set healer.holdout=0 or schedule=[]")
