"""Logit knowledge distillation: align only the outputs (KL to the dense model's softened logits)."""

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from starfish_cli.healing.base import GradualHealer
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.teacher import TEACHER_MODES, TeacherTargets, chunked_logit_kd_loss, logit_kd_loss
from starfish_cli.models import structure_of
from starfish_cli.models.outputs import head_rows, per_token
from starfish_cli.registry import Range


@HEALERS.register("kd")
@dataclass(eq=False)
class LogitKDHealer(GradualHealer):
    """Trains the same pruned matrices as STARFISH, on the same images and budget; only the loss differs.

    A causal LM's logits are vocabulary-wide at every token: its student stops at the last block, and the
    loss runs the head over a chunk of tokens at a time (the teacher's head: only weights inside the blocks
    train, so the student's head is the dense one), so no step holds a batch's logits."""

    temperature: Annotated[float, Range(0, low_open=True)] = 1.0
    teacher: Literal[TEACHER_MODES] = "auto"

    _by_tokens = False  # set per heal: whether the student is a causal LM

    @property
    def student_states(self) -> tuple[str, ...]:
        return ("blocks",) if self._by_tokens else ()

    @property
    def student_outputs(self) -> bool:
        return not self._by_tokens

    def heal(self, student, teacher, masks, calibration, device, precision=torch.float32, state_file=None,
             world=None):
        self._by_tokens = per_token(structure_of(student))
        return super().heal(student, teacher, masks, calibration, device, precision, state_file, world)

    def teacher_targets(self, teacher, calibration, device, blocks):
        return TeacherTargets(teacher, (), self.teacher, calibration, self.batch_size, device)

    def objective(self, outputs, batch, targets, device):
        images = batch[1].to(device, non_blocking=True)
        if not self._by_tokens:
            teacher_logits, _ = targets(batch[0], images)
            return logit_kd_loss(outputs[0], teacher_logits, self.temperature)
        teacher_state, _ = targets.head_inputs(batch[0], images)
        structure = targets.structure
        return chunked_logit_kd_loss(head_rows(structure, outputs[1][-1]), head_rows(structure, teacher_state),
                                     structure.head, targets.logits, self.temperature, targets.rows_per_chunk)
