"""Text as token streams: documents to one stream, and windows of it."""

from collections.abc import Callable, Iterable

import torch


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
