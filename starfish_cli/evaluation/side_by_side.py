"""One batch through several models together, block by block, each compared with the reference model."""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from starfish_cli.healing.states import block_cosine
from starfish_cli.models.base import ModelStructure
from starfish_cli.runtime.device import autocast


class Clock:
    """Each model's own compute time, kept apart from the data's and the other models': the models
    take turns on the same batch, so one timer around the batch would measure them all."""

    def __init__(self, device: torch.device, precision: torch.dtype, names):
        self.device, self.precision = device, precision
        self.seconds = dict.fromkeys(names, 0.0)

    def run(self, name: str, step, *arguments):
        if self.device.type == "cuda":  # the host-to-device copy and the other models are not its time
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        with autocast(self.device, self.precision):
            result = step(*arguments)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] += time.perf_counter() - started
        return result


@dataclass
class BatchOutputs:
    logits: dict[str, torch.Tensor]  # every model's, the reference's taken from the cache when it was there
    cosines: dict[str, list[torch.Tensor]]  # per block, each model's output against the reference's
    reference_states: list[torch.Tensor] | None  # fp32 on the host, only when asked for (to record them)


class SideBySide:
    """The models go through the blocks together, so only one block's states are held at a time
    (not every block's of every model), and each is compared with the reference's as it appears."""

    def __init__(self, structures: Mapping[str, ModelStructure], reference: str, blocks: int, clock: Clock):
        self.structures, self.reference, self.blocks, self.clock = dict(structures), reference, blocks, clock

    def run(self, inputs: torch.Tensor, cached: tuple | None = None, keep_reference: bool = False) -> BatchOutputs:
        """`cached`: the reference's (logits, block states) of this batch from an earlier run; the
        reference is then not run again."""
        running = {name: structure for name, structure in self.structures.items()
                   if not (name == self.reference and cached is not None)}
        hidden = {name: self.clock.run(name, structure.embed, inputs) for name, structure in running.items()}
        cosines: dict[str, list[torch.Tensor]] = {name: [] for name in self.structures}
        kept = [] if keep_reference else None
        for block in range(self.blocks):
            reference_state = self._block(block, running, hidden, cached, cosines)
            if kept is not None:
                kept.append(reference_state.float().cpu())
        logits = {name: self.clock.run(name, structure.head, hidden[name]) for name, structure in running.items()}
        del hidden
        if cached is not None:
            logits[self.reference] = cached[0].to(self.clock.device)
        return BatchOutputs(logits, cosines, kept)

    def _block(self, block: int, running: Mapping[str, ModelStructure], hidden: dict[str, torch.Tensor],
               cached: tuple | None, cosines: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """Advances `hidden` through one block and appends each model's cosine; gives the reference's state."""
        for name, structure in running.items():
            hidden[name] = self.clock.run(name, structure.run_block, block, hidden[name])
        reference_state = cached[1][block].to(self.clock.device) if cached is not None else hidden[self.reference]
        for name in self.structures:
            state = reference_state if name == self.reference and cached is not None else hidden[name]
            cosines[name].append(block_cosine(state, reference_state))
        return reference_state
