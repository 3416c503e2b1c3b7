"""A model's outputs a chunk of rows at a time. A causal LM's logits are vocabulary-wide at every token
(32 windows of 256 tokens over a 49,152-token vocabulary: 1.6 GB in fp32), so what reads them (perplexity,
distillation) applies the head to a few hundred of the last block's rows at once, never to a whole batch."""

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
