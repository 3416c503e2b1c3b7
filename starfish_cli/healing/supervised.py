"""Supervised fine-tuning with labels on the calibration images: an upper-bound comparator.

It is the only healer that sees labels; every report marks it (`calibration.labels_used`).
"""

import torch.nn.functional as F

from starfish_cli.healing.base import GradientHealer
from starfish_cli.healing.registry import HEALERS


@HEALERS.register("supervised")
class SupervisedHealer(GradientHealer):
    labels_used = True

    def __init__(self, epochs: int = 10, batch_size: int = 32, lr: float = 6e-4, min_lr: float = 1e-6,
                 weight_decay: float = 0.0, reshuffle: bool = False, save_every: int = 200, seed: int = 0):
        super().__init__(epochs, batch_size, lr, min_lr, weight_decay, seed, reshuffle, save_every)

    def loss(self, outputs, batch, targets, device):
        return F.cross_entropy(outputs[0], batch[2].to(device))
