"""STARFISH: heal a pruned ViT by aligning its internal states with the dense model's.

Reference recipe (arXiv 2606.01126), the defaults here: per-token 1 − cos over the
embedding dimension on every block's output, averaged over tokens, batch and blocks; only
the pruned weight matrices train; masks fixed; Adam, lr 6e-4 with per-step cosine decay to
1e-6, batch 32, 10 epochs; no labels. Variants are options: which states, the distance, an
added logit-KD term, block-wise healing, and consistent augmented views (function matching: a
fresh random view of the calibration batch every step, seen by the student and the recomputed teacher).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from starfish_cli.runtime import distributed
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing.base import PARAMETER_GROUPS, GradualHealer, check_parameter_groups, parameter_names
from starfish_cli.healing.recipes import RECIPE_KEYS, RECIPES, with_recipe
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.states import STATE_KINDS, STATE_LOSSES, state_alignment_loss
from starfish_cli.healing.teacher import TEACHER_MODES, TeacherTargets, logit_kd_loss
from starfish_cli.healing.views import AUGMENTATIONS, CalibrationViews
from starfish_cli.healing.blockwise import MODES
from starfish_cli.registry import Range

PARAMETER_GROUP_NAMES = tuple(PARAMETER_GROUPS)


@HEALERS.register("starfish")
@dataclass(eq=False)
class StarfishHealer(GradualHealer):
    # the budget, batch, learning rate, mode and loss left unset (None) are the recipe's (healing/recipes.py)
    recipe: Literal[tuple(RECIPES)] = "reference"
    epochs: Annotated[int, Range(0)] | None = None
    batch_size: Annotated[int, Range(1)] | None = None
    lr: Annotated[float, Range(0, low_open=True)] | None = None
    mode: Literal[MODES] | None = None
    states: Literal[STATE_KINDS] | Sequence[Literal[STATE_KINDS]] = ("blocks",)  # the states aligned
    loss: Literal[tuple(STATE_LOSSES)] | None = None  # the distance between a student and a teacher state
    kd_weight: Annotated[float, Range(0)] = 0.0  # > 0 adds a logit-KD term
    kd_temperature: Annotated[float, Range(0, low_open=True)] = 1.0
    teacher: Literal[TEACHER_MODES] = "auto"
    augment: Literal[AUGMENTATIONS] | Sequence[Literal[AUGMENTATIONS]] = ()  # function matching's views
    shift: Annotated[int, Range(0)] = 2  # pixels, for augment=[shift]
    mix_alpha: Annotated[float, Range(0, low_open=True)] = 0.4  # mixup's and cutmix's Beta(α, α)
    train: Literal[PARAMETER_GROUP_NAMES] | Sequence[Literal[PARAMETER_GROUP_NAMES]] = ("pruned_weights",)

    def check(self):
        for key, value in with_recipe(self.recipe, {key: getattr(self, key) for key in RECIPE_KEYS}).items():
            setattr(self, key, value)  # once, as the healer is built: the config leaves them null
        super().check()
        self.states = [self.states] if isinstance(self.states, str) else list(self.states)
        self.augment = [self.augment] if isinstance(self.augment, str) else list(self.augment)
        self.train = check_parameter_groups(self.train)
        if not self.states:
            raise StarfishError(f"healer.states=[]: choose from {', '.join(STATE_KINDS)}")
        if self.mode == "blockwise":
            self._check_blockwise()
        if self.augment and self.holdout:
            raise StarfishError("healer.holdout measures the held-out items as they are, but healer.augment trains "
                                "on new views of them: set healer.holdout=0 or augment=[]")
        if self.augment and self.teacher in ("gpu", "host"):
            raise StarfishError(f"healer.teacher={self.teacher} caches targets of the raw images, but healer.augment "
                                "shows a new view every step: use teacher=recompute or auto")
        self._views: CalibrationViews | None = None

    @classmethod
    def label_defaults(cls, described) -> dict:
        """A label compares epochs, batch and lr with the recipe's, not with the class's None: under the extreme
        recipe 7 epochs read `starfish[epochs=7]`, not its three values."""
        return vars(RECIPES[described.get("recipe", "reference")])

    def _check_blockwise(self) -> None:
        """What block-wise healing cannot do; the way out named (the `lm` recipe heals language models block-wise)."""
        end_to_end = "healer.mode=end_to_end (language models: healer.recipe=lm_end_to_end)"
        if self.states != ["blocks"] or self.kd_weight:
            raise StarfishError("healer.mode=blockwise aligns block outputs only: use states=[blocks] and kd_weight=0, "
                                f"or {end_to_end}")
        if self.schedule:
            raise StarfishError(f"healer.mode=blockwise heals at the final masks only: use {end_to_end} or schedule=[]")
        if self.train != ["pruned_weights"]:
            raise StarfishError("healer.mode=blockwise trains the pruned weights only: use train=[pruned_weights], "
                                f"or {end_to_end}")
        if self.augment:
            raise StarfishError("healer.mode=blockwise heals on cached block inputs, which have no views: "
                                f"use {end_to_end} or augment=[]")

    def trainable_names(self, student):
        return parameter_names(student, self.train)

    def teacher_targets(self, teacher, calibration, device, blocks):
        mode = "recompute" if self.augment else self.teacher  # a view's targets exist only once it is drawn
        return TeacherTargets(teacher, tuple(self.states), mode, calibration, self.batch_size, device,
                              with_outputs=self.student_outputs, blocks=blocks)

    @property
    def student_states(self) -> tuple[str, ...]:
        return tuple(self.states)

    @property
    def student_outputs(self) -> bool:
        return bool(self.kd_weight)  # the logit-KD term reads logits; state alignment alone does not

    def step_inputs(self, batch, device):
        images = super().step_inputs(batch, device)
        return self._views(images) if self._views else images

    def objective(self, outputs, batch, targets, device):
        logits, states = outputs
        teacher_logits, teacher_states = targets(batch[0], batch[1].to(device, non_blocking=True))
        loss = state_alignment_loss(states, teacher_states, self.loss)
        if self.kd_weight:
            loss = loss + self.kd_weight * logit_kd_loss(logits, teacher_logits, self.kd_temperature)
        return loss

    def heal(self, student, teacher, masks, calibration, device, precision=torch.float32, state_file=None,
             world=None):
        world = world or distributed.current()
        # every heal draws the same views for a seed; ranks of a torchrun draw different ones (block-wise: none)
        self._views = (CalibrationViews(self.augment, self.shift, self.mix_alpha, self.seed + world.rank)
                       if self.augment else None)
        return super().heal(student, teacher, masks, calibration, device, precision, state_file, world)
