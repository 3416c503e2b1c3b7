"""A model's outputs a chunk of rows at a time. A causal LM's logits are vocabulary-wide at every token
(32 windows of 256 tokens over a 49,152-token vocabulary: 1.6 GB in fp32), so what reads them (perplexity,
distillation, speed) runs the model to the end of its last block and applies the head to a few hundred of
that block's rows at once, never to a whole batch; what needs no outputs (calibration statistics) stops there."""

from collections.abc import Iterator

import torch

from starfish_cli.models.base import ModelStructure

CHUNK_BYTES = 64 * 2**20  # the fp32 outputs of one chunk of rows


def per_token(structure: ModelStructure) -> bool:
    """Whether the head gives each token its own outputs (a causal LM), rather than pooling an item's tokens
    into one output (a classifier)."""
    return structure.modality == "text"


def head_rows(structure: ModelStructure, last_state: torch.Tensor) -> torch.Tensor:
    """The head's inputs as rows whose outputs are independent: a causal LM's tokens (batch·tokens × width),
    a classifier's items (batch × tokens × width, as they are)."""
    return last_state.flatten(0, -2) if per_token(structure) else last_state


def values_per_row(structure: ModelStructure) -> int:
    """Outputs of one row: a causal LM's vocabulary (its `output_size` is a whole window's), a classifier's classes."""
    if per_token(structure):
        return structure.output_size() // structure.state_size()[0]
    return structure.output_size()


def rows_per_chunk(values: int, budget: int = CHUNK_BYTES) -> int:
    """How many rows of `values` outputs each fit `budget` bytes in fp32; at least one."""
    return max(1, budget // (4 * values))


class _PastTheBlocks(Exception):
    """Raised by a hook to end a forward pass after the last block."""


def last_block_output(structure: ModelStructure, inputs: torch.Tensor) -> torch.Tensor:
    """The model on `inputs` up to the end of its last block (the head's input); what follows is not run."""
    captured = []

    def stop(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _PastTheBlocks

    handle = structure.blocks[-1].register_forward_hook(stop)
    try:
        structure.outputs(inputs)  # a causal LM's without its KV cache (two copies of every layer's keys and values)
    except _PastTheBlocks:
        pass
    finally:
        handle.remove()
    return captured[0]


def outputs_by_chunks(structure: ModelStructure, inputs: torch.Tensor) -> Iterator[torch.Tensor]:
    """The model's outputs on `inputs` (the same computation as its forward), `rows_per_chunk` rows at a time."""
    rows = head_rows(structure, last_block_output(structure, inputs))
    chunk = rows_per_chunk(values_per_row(structure))
    for start in range(0, rows.shape[0], chunk):
        yield structure.head(rows[start:start + chunk])
