"""Logit knowledge distillation: align only the outputs (KL to the dense model's softened logits)."""

from dataclasses import dataclass
from typing import Annotated, Literal

from starfish_cli.healing.base import GradientHealer, GradualOptions
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.teacher import TEACHER_MODES, TeacherTargets, logit_kd_loss
from starfish_cli.registry import Range


@HEALERS.register("kd")
@dataclass(eq=False)
class LogitKDHealer(GradientHealer, GradualOptions):
    """Trains the same pruned matrices as STARFISH, on the same images and budget; only the loss differs."""

    temperature: Annotated[float, Range(0, low_open=True)] = 1.0
    teacher: Literal[TEACHER_MODES] = "auto"

    def teacher_targets(self, teacher, calibration, device):
        return TeacherTargets(teacher, (), self.teacher, calibration, self.batch_size, device)

    def objective(self, outputs, batch, targets, device):
        teacher_logits, _ = targets(batch[0], batch[1].to(device, non_blocking=True))
        return logit_kd_loss(outputs[0], teacher_logits, self.temperature)
