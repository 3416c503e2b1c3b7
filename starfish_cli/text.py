"""Text as token streams: documents to one stream, windows of it, and perplexity over windows."""

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


def token_stream(tokenize: Callable[[str], list[int]], texts: Iterable[str], separator: int | None) -> torch.Tensor:
    """One stream of every document's tokens, each document followed by `separator` (end of text)
    when there is one; empty documents add nothing."""
    tokens: list[int] = []
    for text in texts:
        if text:
            tokens += tokenize(text)
            if separator is not None:
                tokens.append(separator)
    return torch.tensor(tokens, dtype=torch.long)


def windows(stream: torch.Tensor, length: int) -> torch.Tensor:
    """Consecutive non-overlapping windows of `length` tokens (windows × length); the tokens after
    the last whole window are left out."""
    count = len(stream) // length
    return stream[: count * length].view(count, length)


def next_token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of every next token (batch × (L−1)) from logits (batch × L × vocab)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none"
                           ).view(tokens.shape[0], -1)


def perplexity(total_nll: float, count: int) -> float:
    """exp of the mean negative log-likelihood per predicted token."""
    return math.exp(total_nll / count) if count else float("nan")
