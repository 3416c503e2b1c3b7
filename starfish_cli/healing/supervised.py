"""Supervised fine-tuning with labels on the calibration images: an upper-bound comparator.

It is the only healer that sees labels; every report marks it (`calibration.labels_used`).
"""

from dataclasses import dataclass

import torch.nn.functional as F

from starfish_cli.healing.base import GradientHealer
from starfish_cli.healing.registry import HEALERS


@HEALERS.register("supervised")
@dataclass(eq=False)
class SupervisedHealer(GradientHealer):
    labels_used = True

    def objective(self, outputs, batch, targets, device):
        return F.cross_entropy(outputs[0], batch[2].to(device))
