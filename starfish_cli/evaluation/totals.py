"""Per-model sums over the evaluation batches, added up across torchrun ranks and turned into results."""

from collections.abc import Iterable, Mapping

import torch

from starfish_cli.evaluation.side_by_side import BatchOutputs
from starfish_cli.runtime.distributed import all_reduce_sum, current
from starfish_cli.runtime.errors import StarfishError


class Totals:
    """Sums and counts, not means: ranks can add them up, and batches of different sizes weigh by size."""

    def __init__(self, names: Iterable[str], metric, blocks: int):
        self.metric, self.blocks = metric, blocks
        self.sums = {name: [0] * metric.size for name in names}
        self.predictions = dict.fromkeys(self.sums, 0)
        self.cosines: dict[str, torch.Tensor | None] = dict.fromkeys(self.sums)
        self.seen = 0

    def add(self, outputs: BatchOutputs, items: int) -> None:
        """One batch of `items` items: its metric sums, and its cosines weighed by its size."""
        for name, (sums, predictions) in outputs.counts.items():
            self.sums[name] = [total + value for total, value in zip(self.sums[name], sums, strict=True)]
            self.predictions[name] += predictions
            cosine = torch.stack(outputs.cosines[name]).cpu() * items
            self.cosines[name] = cosine if self.cosines[name] is None else self.cosines[name] + cosine
        self.seen += items


def reduce_across_ranks(totals: Totals, seconds: Mapping[str, float]) -> tuple[int, dict[str, dict]]:
    """(items seen by all ranks, each model's results). Under torchrun each rank saw its own shard;
    every rank must join every reduction, a rank that saw nothing with zeros."""
    names = list(totals.sums)
    counts = torch.tensor([[*totals.sums[n], totals.predictions[n], seconds[n]] for n in names], dtype=torch.float64)
    cosines = torch.stack([totals.cosines[n].double() if totals.cosines[n] is not None
                           else torch.zeros(totals.blocks, dtype=torch.float64) for n in names])
    seen = int(all_reduce_sum(torch.tensor([totals.seen], dtype=torch.float64)).item())
    all_reduce_sum(counts)
    all_reduce_sum(cosines)
    if seen == 0:
        raise StarfishError("the evaluation split gave no images: check data.eval_split and eval.max_images")
    world_size = current().size  # the ranks ran at once: their mean time is the wall time
    return seen, {
        name: {
            **totals.metric.results([value.item() for value in counts[i, :-2]], int(counts[i, -2].item())),
            "block_cosine": [float(c) / seen for c in cosines[i]],
            "images_per_second": seen / max(counts[i, -1].item() / world_size, 1e-9),
        }
        for i, name in enumerate(names)
    }
