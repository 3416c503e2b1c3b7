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

    def count(self, logits: torch.Tensor, reference_prediction: torch.Tensor, labels: torch.Tensor) -> tuple[list, int]:
        """(sums of this batch, how many predictions they cover)."""
        return [topk_correct(logits, labels, 1), topk_correct(logits, labels, 5),
                int((logits.argmax(-1) == reference_prediction).sum())], len(labels)

    def results(self, sums: list[float], predictions: int) -> dict:
        return {"top1": 100.0 * sums[0] / predictions, "top5": 100.0 * sums[1] / predictions,
                "agreement": 100.0 * sums[2] / predictions}


class Perplexity:
    """Causal LMs on token windows (the labels are the windows): perplexity of every next token,
    next-token top-1, and agreement of the top-1 next token with the reference's."""

    size = 3

    def count(self, logits, reference_prediction, labels):
        predicted = logits[:, :-1].argmax(-1)
        return [float(next_token_nll(logits, labels).double().sum()), int((predicted == labels[:, 1:]).sum()),
                int((predicted == reference_prediction[:, :-1]).sum())], labels[:, 1:].numel()

    def results(self, sums, predictions):
        return {"perplexity": perplexity(sums[0], predictions), "top1": 100.0 * sums[1] / predictions,
                "agreement": 100.0 * sums[2] / predictions, "tokens": predictions}


METRICS = {"accuracy": Accuracy, "perplexity": Perplexity}  # a family's `metric` → how evaluation measures
