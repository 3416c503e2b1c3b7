"""Block-wise healing (EBFT, the "free lunch" family): each block in turn, on the inputs the already-healed prefix
produces, towards the dense block's output. A healer that offers it declares `mode` and `loss`; what it trains in
each block is its own `trainable_names` (STARFISH: the pruned weights; norm: the norms and biases)."""

import torch

from starfish_cli.data.loader import loader
from starfish_cli.healing.loop import Job, train
from starfish_cli.healing.states import state_alignment_loss
from starfish_cli.models import structure_of
from starfish_cli.runtime.distributed import World
from starfish_cli.runtime.errors import StarfishError

MODES = ("end_to_end", "blockwise")


def heal_blockwise(healer, student, teacher, masks, calibration, device, precision, world, result) -> None:
    """Heal `student` block by block towards `teacher` with `healer`'s loss and settings, adding to `result`
    (a HealResult naming the trained parameters)."""
    if world.active:
        raise StarfishError("healer.mode=blockwise runs in one process: launch it without torchrun, or heal with "
                            "healer.mode=end_to_end")
    structure, dense_structure = structure_of(student), structure_of(teacher)  # each keeps its layer arguments
    # the dense and the healed prefixes' states advance together, one block at a time: three calibration-sized
    # tensors live at once, whatever the depth (embeddings are dense and frozen: block 0 sees the dense input)
    dense = healed = first_block_inputs(dense_structure, calibration, healer.batch_size, device)
    done = -1  # the dense blocks run so far: a block of the student targets the dense block it was
    for number, source in enumerate(structure.block_sources()):
        for done in range(done + 1, source + 1):
            dense = run_block(dense_structure, done, dense, healer.batch_size, device)
        healed = heal_block(healer, structure, number, healed, dense, block_masks(structure, number, masks),
                            device, precision, result)


def heal_block(healer, structure, number: int, inputs: torch.Tensor, target: torch.Tensor, masks, device,
               precision, result, outputs: torch.Tensor | None = None) -> torch.Tensor:
    """Heal block `number` of `structure` on `inputs` (every calibration item, as the healed prefix makes it;
    host memory) towards `target` (the dense block's outputs), training the block's share of
    `result.trained_parameters` with `healer`'s settings and loss, and adding to `result`; the healed block's
    outputs, written to `outputs` (a host tensor shaped as `inputs`, e.g. file-backed) or a new tensor."""
    block_set = BlockInputs(inputs)

    def loss(batch, _forward):
        indices, x = batch
        return state_alignment_loss([structure.run_block(number, x.to(device))],
                                    [target[indices].to(device).float()], healer.loss)

    job = Job(structure.model, structure.block_parameter_names(result.trained_parameters, number), masks, block_set,
              loss, description=f"healing block {number}")
    result.steps += train(job, healer.settings(), World(), device, precision, result.loss_history,
                          selection=result.holdout)
    outputs = torch.empty(inputs.shape, dtype=inputs.dtype) if outputs is None else outputs
    with torch.no_grad():
        for indices, x in loader(block_set, healer.batch_size, device=device):
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
