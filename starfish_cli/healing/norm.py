"""Norm/bias recalibration: the cheap baseline. Only LayerNorm parameters and linear biases train,
on the STARFISH loss (block-output cosine); the pruned matrices stay as pruned."""

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing.base import GradientHealer, norm_and_bias_names
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.states import state_alignment_loss
from starfish_cli.healing.teacher import TEACHER_MODES, TeacherTargets


@HEALERS.register("norm")
class NormBiasHealer(GradientHealer):
    student_states = ("blocks",)
    student_outputs = False

    def __init__(self, epochs: int = 10, batch_size: int = 32, lr: float = 6e-4, min_lr: float = 1e-6,
                 weight_decay: float = 0.0, reshuffle: bool = False, save_every: int = 200, teacher: str = "auto",
                 seed: int = 0):
        super().__init__(epochs, batch_size, lr, min_lr, weight_decay, seed, reshuffle, save_every)
        if teacher not in TEACHER_MODES:
            raise StarfishError(f"healer.teacher={teacher!r}: choose one of {', '.join(TEACHER_MODES)}")
        self.teacher = teacher

    def trainable_names(self, student):
        return norm_and_bias_names(student)

    def teacher_targets(self, teacher, calibration, device):
        return TeacherTargets(teacher, self.student_states, self.teacher, calibration, self.batch_size, device,
                              with_outputs=self.student_outputs)

    def loss(self, outputs, batch, targets, device):
        _, teacher_states = targets(batch[0], batch[1].to(device, non_blocking=True))
        return state_alignment_loss(outputs[1], teacher_states)
