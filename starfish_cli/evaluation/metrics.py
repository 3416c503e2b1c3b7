"""What evaluation measures per family: top-1/top-5 and agreement for classifiers, perplexity,
next-token top-1 and agreement for causal LMs."""

import math

import torch
import torch.nn.functional as F


def next_token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of every next token (batch × (L−1)) from logits (batch × L × vocab)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none"
                           ).view(tokens.shape[0], -1)


def perplexity(total_nll: float, count: int) -> float:
    """exp of the mean negative log-likelihood per predicted token."""
    return math.exp(total_nll / count) if count else float("nan")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[-1])
    return int((logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum())


class Accuracy:
    """Classifiers: top-1 and top-5 against the labels and top-1 agreement with the reference, per item."""

    size = 3  # sums per batch

    def rows(self, last_state: torch.Tensor) -> torch.Tensor:
        """The head's inputs, a row per prediction: an item (the head pools its tokens)."""
        return last_state

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """What each row should predict: its label."""
        return labels

    def count(self, logits: torch.Tensor, reference_prediction: torch.Tensor, labels: torch.Tensor) -> tuple[list, int]:
        """(sums of this batch, how many predictions they cover)."""
        return [topk_correct(logits, labels, 1), topk_correct(logits, labels, 5),
                int((logits.argmax(-1) == reference_prediction).sum())], len(labels)

    def results(self, sums: list[float], predictions: int) -> dict:
        return {"top1": 100.0 * sums[0] / predictions, "top5": 100.0 * sums[1] / predictions,
                "agreement": 100.0 * sums[2] / predictions}


class Perplexity:
    """Causal LMs on token windows (the labels are the windows): perplexity of every next token,
    next-token top-1, and agreement of the top-1 next token with the reference's. Counted on rows, a
    token each, so that the vocabulary-wide logits can be made and counted a chunk of rows at a time."""

    size = 3

    def rows(self, last_state: torch.Tensor) -> torch.Tensor:
        """The head's inputs, a row per prediction: every position of a window but its last (batch·(L−1) × width)."""
        return last_state[:, :-1].flatten(0, 1)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """What each row should predict: the next token of its window."""
        return labels[:, 1:].flatten()

    def count(self, logits: torch.Tensor, reference_prediction: torch.Tensor, targets: torch.Tensor) -> tuple[list, int]:
        """(sums over these rows, how many predictions they cover): logits rows × vocabulary, the others per row."""
        predicted = logits.argmax(-1)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        return [float(nll.double().sum()), int((predicted == targets).sum()),
                int((predicted == reference_prediction).sum())], targets.numel()

    def results(self, sums, predictions):
        return {"perplexity": perplexity(sums[0], predictions), "top1": 100.0 * sums[1] / predictions,
                "agreement": 100.0 * sums[2] / predictions, "tokens": predictions}


METRICS = {"accuracy": Accuracy, "perplexity": Perplexity}  # a family's `metric` → how evaluation measures
