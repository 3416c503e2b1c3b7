"""Block-wise healing (EBFT, the "free lunch" family): each block in turn, on the inputs the already-healed prefix
produces, towards the dense block's output. A healer that offers it declares `mode`; what it trains in each block
is its own `trainable_names` (STARFISH: the pruned weights; norm: the norms and biases)."""

from dataclasses import dataclass
from typing import Literal

import torch

from starfish_cli.data.loader import loader
from starfish_cli.healing.base import HealResult
from starfish_cli.healing.states import state_alignment_loss
from starfish_cli.models import structure_of
from starfish_cli.runtime import distributed
from starfish_cli.runtime.errors import StarfishError

MODES = ("end_to_end", "blockwise")


@dataclass(eq=False)
class BlockwiseHealing:
    """Mixed into a GradientHealer dataclass: the `mode` option and the two ways to heal block by block (the whole
    model in memory, or one block handed over at a time by the layer-by-layer onloading pass)."""

    mode: Literal[MODES] = "end_to_end"
    loss = "cosine"  # STARFISH declares it as an option

    def heal(self, student, teacher, masks, calibration, device, precision=torch.float32, state_file=None):
        if self.mode == "blockwise":
            return self.heal_blockwise(student, teacher, masks, calibration, device, precision)
        return super().heal(student, teacher, masks, calibration, device, precision, state_file)

    def heal_blockwise(self, student, teacher, masks, calibration, device, precision) -> HealResult:
        if distributed.current().active:
            raise StarfishError("healer.mode=blockwise runs in one process: launch it without torchrun, or heal with "
                                "healer.mode=end_to_end")
        result = HealResult(trained_parameters=self.trainable_names(student))
        structure, dense_structure = structure_of(student), structure_of(teacher)  # each keeps its layer arguments
        # the dense and the healed prefixes' states advance together, one block at a time: three calibration-sized
        # tensors live at once, whatever the depth (embeddings are dense and frozen: block 0 sees the dense input)
        dense = healed = first_block_inputs(dense_structure, calibration, self.batch_size, device)
        for number in range(len(structure.blocks)):
            target = run_block(dense_structure, number, dense, self.batch_size, device)
            healed = self.heal_block(structure, number, healed, target, block_masks(structure, number, masks),
                                     device, precision, result)
            dense = target
        return result

    def heal_block(self, structure, number: int, inputs: torch.Tensor, target: torch.Tensor, masks, device,
                   precision, result: HealResult, outputs: torch.Tensor | None = None) -> torch.Tensor:
        """Heal block `number` of `structure` on `inputs` (every calibration item, as the healed prefix makes it;
        host memory) towards `target` (the dense block's outputs), training the block's share of
        `result.trained_parameters` and adding to `result`; the healed block's outputs, written to `outputs`
        (a host tensor shaped as `inputs`, e.g. file-backed) or a new tensor."""
        names = structure.block_parameter_names(result.trained_parameters, number)
        block_set = BlockInputs(inputs)

        def loss_of_batch(batch, _forward):
            indices, x = batch
            return state_alignment_loss([structure.run_block(number, x.to(device))],
                                        [target[indices].to(device).float()], self.loss)

        result.steps += self.optimize(structure.model, names, masks, block_set, device, precision,
                                      result.loss_history, loss_of_batch, f"healing block {number}")
        outputs = torch.empty(inputs.shape, dtype=inputs.dtype) if outputs is None else outputs
        with torch.no_grad():
            for indices, x in loader(block_set, self.batch_size, device=device):
                outputs[indices] = structure.run_block(number, x.to(device)).cpu()
        return outputs


class BlockInputs(torch.utils.data.Dataset):
    def __init__(self, inputs: torch.Tensor):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return index, self.inputs[index]


def block_masks(structure, number: int, masks):
    """The masks of block `number`'s layers: a step re-masks the block it trains, not the whole model."""
    prefix = f"{structure.block_name(number)}."
    return {name: mask for name, mask in masks.items() if name.startswith(prefix)}


@torch.no_grad()
def first_block_inputs(structure, calibration, batch_size, device) -> torch.Tensor:
    """The first block's input for every calibration item, in the calibration's order (host memory)."""
    batches = (inputs.to(device) for _indices, inputs, *_ in loader(calibration, batch_size, device=device))
    return torch.cat([x.cpu() for x in structure.first_block_inputs(batches)])


@torch.no_grad()
def run_block(structure, number: int, inputs: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Block `number` of `structure` on every item of `inputs` (host memory), batch by batch."""
    return torch.cat([structure.run_block(number, x.to(device)).cpu() for x in inputs.split(batch_size)])
