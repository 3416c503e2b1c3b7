"""Norm/bias recalibration: the cheap baseline. Only LayerNorm parameters and linear biases train,
on the STARFISH loss (block-output cosine); the pruned matrices stay as pruned. `mode=blockwise` trains each
block's own on its output alone, one block at a time (also the layer-by-layer onloading pass)."""

from dataclasses import dataclass
from typing import Literal

from starfish_cli.healing.base import GradientHealer, norm_and_bias_names
from starfish_cli.healing.blockwise import MODES
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.states import state_alignment_loss
from starfish_cli.healing.teacher import TEACHER_MODES, TeacherTargets


@HEALERS.register("norm")
@dataclass(eq=False)
class NormBiasHealer(GradientHealer):
    student_states = ("blocks",)
    student_outputs = False
    loss = "cosine"
    mode: Literal[MODES] = "end_to_end"
    teacher: Literal[TEACHER_MODES] = "auto"

    def trainable_names(self, student):
        return norm_and_bias_names(student)

    def teacher_targets(self, teacher, calibration, device, blocks):
        return TeacherTargets(teacher, self.student_states, self.teacher, calibration, self.batch_size, device,
                              with_outputs=self.student_outputs, blocks=blocks)

    def objective(self, outputs, batch, targets, device):
        _, teacher_states = targets(batch[0], batch[1].to(device, non_blocking=True))
        return state_alignment_loss(outputs[1], teacher_states)
