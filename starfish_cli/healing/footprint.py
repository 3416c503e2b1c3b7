"""What end-to-end healing holds on each device, estimated before anything runs, so that a model that does
not fit is refused in one line that names the ways that do: block-wise healing, or FSDP2 across N devices."""

import math
from dataclasses import dataclass

from torch import nn

from starfish_cli.models import structure_of
from starfish_cli.models.outputs import per_token
from starfish_cli.runtime.errors import StarfishError

FP32 = 4
TRAINED_STATE = 3  # a gradient and Adam's two moments per trained value, each fp32
ACTIVATION_BYTES = 34  # bytes per token and width per block kept for backward (Korthikanti et al., 16-bit)
MAX_DEVICES = 4096


@dataclass(frozen=True)
class Footprint:
    """Bytes per device: `fixed` whatever the device count (the dense teacher, the student's parts outside the
    blocks), `sharded` split over N devices under FSDP2 (the blocks' weights, the trained state, activations
    of batch / N items)."""

    fixed: int
    sharded: int

    def per_device(self, devices: int = 1) -> int:
        return self.fixed + math.ceil(self.sharded / devices)

    def devices_needed(self, budget: int) -> int | None:
        """The fewest devices on which it fits `budget` bytes each; None when the fixed part alone does not."""
        if self.fixed >= budget:
            return None
        devices = math.ceil(self.sharded / (budget - self.fixed))
        return devices if devices <= MAX_DEVICES else None


def tokens_per_item(model: nn.Module, calibration) -> int:
    """Tokens one calibration item puts through every block: a text window's length (`calib.seq_len`, not the
    model's context), or the model's own count (a ViT's patches and prefix tokens)."""
    structure = structure_of(model)
    if per_token(structure):
        return int(calibration[0][1].shape[-1])
    return structure.state_size()[0]


def end_to_end_footprint(model: nn.Module, trained: int, batch_size: int, tokens: int | None = None) -> Footprint:
    """The dense teacher and the student (fp32), the trained values' gradient and Adam state, and the activations
    of one batch of `tokens` per item through every block (fp32: twice the 16-bit figure; conservative under bf16
    autocast). `tokens`: what a calibration item holds (`tokens_per_item`); None: the model's own count (a ViT's
    patches, a causal LM's window)."""
    structure = structure_of(model)
    total = sum(parameter.numel() for parameter in model.parameters())
    in_blocks = sum(parameter.numel() for block in structure.blocks for parameter in block.parameters())
    window, width = structure.state_size()
    activations = batch_size * len(structure.blocks) * (tokens or window) * width * ACTIVATION_BYTES * 2
    return Footprint(fixed=FP32 * total + FP32 * (total - in_blocks),
                     sharded=FP32 * in_blocks + FP32 * TRAINED_STATE * trained + activations)


def check_fits(footprint: Footprint, budget: int, devices: int, model_name: str) -> None:
    """A one-line refusal when end-to-end healing does not fit `budget` bytes per device on `devices` (FSDP2
    across them, or one)."""
    if footprint.per_device(devices) <= budget:
        return
    needed = footprint.devices_needed(budget)
    fsdp = (f", or dist_strategy=fsdp across {needed} devices (torchrun --nproc-per-node {needed})"
            if needed else " (FSDP2 cannot: the dense teacher and the unsharded parts alone exceed it)")
    raise StarfishError(f"end-to-end healing of {model_name} needs about {footprint.per_device(devices) / 1e9:.3g} GB "
                        f"per device, more than memory_budget={budget / 1e9:.3g} GB: use healer.mode=blockwise{fsdp}")
