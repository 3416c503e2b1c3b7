"""Norm/bias recalibration: the cheap baseline. Only LayerNorm parameters and linear biases train,
on the STARFISH loss; the pruned matrices stay as pruned."""

from starfish_cli.healing.base import norm_and_bias_names
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.starfish import StarfishHealer


@HEALERS.register("norm")
class NormBiasHealer(StarfishHealer):
    def __init__(self, epochs: int = 10, batch_size: int = 32, lr: float = 6e-4, min_lr: float = 1e-6,
                 weight_decay: float = 0.0, reshuffle: bool = False, teacher: str = "auto", seed: int = 0):
        super().__init__(epochs, batch_size, lr, min_lr, weight_decay, reshuffle=reshuffle, teacher=teacher,
                         seed=seed)

    def trainable_names(self, student):
        return norm_and_bias_names(student)
