"""One batch through several models together, block by block, each compared with the reference model."""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from starfish_cli.healing.states import block_cosine
from starfish_cli.models.base import ModelStructure
from starfish_cli.models.outputs import rows_per_chunk, values_per_row
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
    counts: dict[str, tuple[list, int]]  # every model's metric sums on the batch, and how many predictions they cover
    cosines: dict[str, list[torch.Tensor]]  # per block, each model's output against the reference's
    reference_states: list[torch.Tensor] | None  # fp32 on the host, only when asked for (to record them)


class SideBySide:
    """The models go through the blocks together, so only one block's states are held at a time
    (not every block's of every model), and each is compared with the reference's as it appears. The
    heads then run on a chunk of rows at a time (a causal LM's tokens: its logits are vocabulary-wide),
    the reference's first, so at most its chunk of outputs and one other model's exist at once."""

    def __init__(self, structures: Mapping[str, ModelStructure], reference: str, blocks: int, clock: Clock, metric):
        self.structures, self.reference, self.blocks, self.clock = dict(structures), reference, blocks, clock
        # each model's block for each of the reference's: none where that block was removed (its input goes on)
        self.own_block = {name: {source: index for index, source in enumerate(structure.block_sources())}
                          for name, structure in self.structures.items()}
        self.metric = metric
        self.chunk = rows_per_chunk(values_per_row(self.structures[reference]))

    def run(self, inputs: torch.Tensor, labels: torch.Tensor, cached: list | None = None,
            keep_reference: bool = False) -> BatchOutputs:
        """`cached`: the reference's block states of this batch from an earlier run; the reference's
        blocks are then not run again (its head runs on the last of them)."""
        running = {name: structure for name, structure in self.structures.items()
                   if not (name == self.reference and cached is not None)}
        hidden = {name: self.clock.run(name, structure.embed, inputs) for name, structure in running.items()}
        cosines: dict[str, list[torch.Tensor]] = {name: [] for name in self.structures}
        kept = [] if keep_reference else None
        for block in range(self.blocks):
            reference_state = self._block(block, running, hidden, cached, cosines)
            if kept is not None:
                kept.append(reference_state.float().cpu())
        hidden[self.reference] = reference_state
        counts = self.count(hidden, labels)
        return BatchOutputs(counts, cosines, kept)

    def _block(self, block: int, running: Mapping[str, ModelStructure], hidden: dict[str, torch.Tensor],
               cached: list | None, cosines: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """Advances `hidden` through one block and appends each model's cosine; gives the reference's state."""
        for name, structure in running.items():
            own = self.own_block[name].get(block)
            if own is not None:
                hidden[name] = self.clock.run(name, structure.run_block, own, hidden[name])
        reference_state = cached[block].to(self.clock.device) if cached is not None else hidden[self.reference]
        for name in self.structures:
            state = reference_state if name == self.reference and cached is not None else hidden[name]
            cosines[name].append(block_cosine(state, reference_state))
        return reference_state

    def count(self, last_states: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, tuple[list, int]]:
        """Each model's metric sums, its head run on `chunk` rows of its last state at a time."""
        rows = {name: self.metric.rows(state) for name, state in last_states.items()}
        targets = self.metric.targets(labels)
        sums = {name: [0] * self.metric.size for name in self.structures}
        predictions = dict.fromkeys(self.structures, 0)
        for start in range(0, len(targets), self.chunk):
            piece = slice(start, start + self.chunk)
            reference_logits = self._head(self.reference, rows[self.reference][piece])
            reference_prediction = reference_logits.argmax(-1)
            for name in self.structures:
                logits = reference_logits if name == self.reference else self._head(name, rows[name][piece])
                chunk_sums, count = self.metric.count(logits, reference_prediction, targets[piece])
                sums[name] = [total + value for total, value in zip(sums[name], chunk_sums, strict=True)]
                predictions[name] += count
                del logits
        return {name: (sums[name], predictions[name]) for name in self.structures}

    def _head(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        return self.clock.run(name, self.structures[name].head, rows)
