"""Logit knowledge distillation: align only the outputs (KL to the dense model's softened logits)."""

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing.base import GradientHealer
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.teacher import TEACHER_MODES, TeacherTargets, logit_kd_loss


@HEALERS.register("kd")
class LogitKDHealer(GradientHealer):
    """Trains the same pruned matrices as STARFISH, on the same images and budget; only the loss differs."""

    def __init__(self, epochs: int = 10, batch_size: int = 32, lr: float = 6e-4, min_lr: float = 1e-6,
                 weight_decay: float = 0.0, reshuffle: bool = False, save_every: int = 200, temperature: float = 1.0,
                 teacher: str = "auto", schedule: list[float] | tuple[float, ...] = (), schedule_share: float = 0.5,
                 seed: int = 0):
        super().__init__(epochs, batch_size, lr, min_lr, weight_decay, seed, reshuffle, save_every, schedule,
                         schedule_share)
        if temperature <= 0 or teacher not in TEACHER_MODES:
            raise StarfishError(f"healer.temperature must be > 0 and healer.teacher one of {', '.join(TEACHER_MODES)}")
        self.temperature, self.teacher = temperature, teacher

    def teacher_targets(self, teacher, calibration, device):
        return TeacherTargets(teacher, (), self.teacher, calibration, self.batch_size, device)

    def loss(self, outputs, batch, targets, device):
        teacher_logits, _ = targets(batch[0], batch[1].to(device, non_blocking=True))
        return logit_kd_loss(outputs[0], teacher_logits, self.temperature)
