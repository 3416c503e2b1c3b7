"""Evaluation: every model on the same batches side by side — the family's metric, agreement with the
reference model, per-block alignment, throughput — with a sweep's shared work reused."""

import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from starfish_cli.evaluation.cache import SWEEP_CACHE, SweepCache
from starfish_cli.evaluation.metrics import METRICS

from starfish_cli.data.loader import loader
from starfish_cli.runtime.distributed import all_reduce_sum, current, shard
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.healing.states import block_cosine
from starfish_cli.runtime.progress import progress_bar
from starfish_cli.runtime.device import autocast


class _Clock:
    """Adds each model's own compute time (not the data's, nor the other models') to its total."""

    def __init__(self, device: torch.device, totals: dict[str, dict]):
        self.device, self.totals = device, totals

    def run(self, name: str, precision: torch.dtype, step, *arguments):
        if self.device.type == "cuda":  # the host-to-device copy and the other models are not its time
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        with autocast(self.device, precision):
            result = step(*arguments)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[name]["seconds"] += time.perf_counter() - started
        return result


@torch.no_grad()
def evaluate(
    models: Mapping[str, nn.Module],
    dataset: torch.utils.data.Dataset,
    device: torch.device,
    batch_size: int = 256,
    reference: str = "dense",
    num_workers: int = 0,
    precision: torch.dtype = torch.float32,
    cache_keys: Mapping[str, str] | None = None,
    cache: SweepCache = SWEEP_CACHE,
    record_reference: bool = False,
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Run every model on the same labelled batches; alignment and agreement are against `reference`.

    Under torchrun every rank evaluates its shard and the counts are summed across ranks.
    `cache_keys` name what a model's results depend on (weights, data, settings): the reference
    model's per-batch outputs, and any other keyed model's finished results, are reused from
    `cache` when the key matches; finished results are stored there. The reference outputs are
    recorded only with `record_reference` (a sweep, where later runs reuse them) and only while
    they fit the cache's cap: memory does not grow with the number of images otherwise. `finish`
    turns each batch the dataset gives into the models' inputs, on the device (e.g. uint8 pixels →
    normalized floats).

    Returns `images` (items: images or token windows) and, per model under `models`: the family
    metric's results (classifiers: top1, top5, agreement in percent; causal LMs: perplexity, top1,
    agreement, tokens), block_cosine (per block), images_per_second (items per second).
    """
    cache_keys = dict(cache_keys or {})
    reference_key = cache_keys.pop(reference, None)
    known = {name: cache.results[key] for name, key in cache_keys.items() if key in cache.results}
    # models under one key are the same weights (e.g. healer=none): run the first, share its results
    first_with_key: dict[str, str] = {}
    same_as = {}
    for name, key in cache_keys.items():
        if name in models and name not in known:
            same_as[name] = first_with_key.setdefault(key, name)
    to_run = {name: model for name, model in models.items()
              if name not in known and same_as.get(name, name) == name}
    metric = METRICS[structure_of(models[reference]).metric]()
    totals = {name: {"sums": [0] * metric.size, "predictions": 0, "seconds": 0.0, "cosine": None} for name in to_run}
    cached = cache.reference_for(reference_key)
    recorded = [] if record_reference and reference_key is not None and cached is None else None
    recorded_bytes = 0
    seen = 0
    structures = {name: structure_of(model) for name, model in to_run.items()}
    blocks = len(structure_of(models[reference]).blocks)
    batches = loader(shard(dataset), batch_size, num_workers=num_workers, device=device)
    with progress_bar("evaluating", len(batches) if hasattr(batches.dataset, "__len__") else None) as advance:
        for number, (_indices, images, labels) in enumerate(batches):
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            if finish is not None:
                images = finish(images)
            reference_batch = cached[number] if cached is not None else None
            running = {name: structure for name, structure in structures.items()
                       if not (name == reference and reference_batch is not None)}
            clock = _Clock(device, totals)
            # the models go through the blocks side by side, so only one block's states are held at a time
            hidden = {name: clock.run(name, precision, structure.embed, images) for name, structure in running.items()}
            cosines: dict[str, list[torch.Tensor]] = {name: [] for name in to_run}
            reference_states = []
            for block in range(blocks):
                for name, structure in running.items():
                    hidden[name] = clock.run(name, precision, structure.run_block, block, hidden[name])
                ref_state = reference_batch[1][block].to(device) if reference_batch is not None else hidden[reference]
                for name in to_run:
                    state = ref_state if name == reference and reference_batch is not None else hidden[name]
                    cosines[name].append(block_cosine(state, ref_state))
                if recorded is not None:
                    reference_states.append(ref_state.float().cpu())
            logits = {name: clock.run(name, precision, structure.head, hidden[name])
                      for name, structure in running.items()}
            del hidden
            if reference_batch is not None:
                logits[reference] = reference_batch[0].to(device)
            ref_logits = logits[reference]
            if recorded is not None:
                recorded_bytes += 4 * (ref_logits.numel() + sum(state.numel() for state in reference_states))
                if recorded_bytes > cache.max_bytes:
                    recorded = None  # it will not fit: stop recording now, not after the loop
                else:
                    recorded.append((ref_logits.float().cpu(), reference_states))
            ref_pred = ref_logits.argmax(-1)
            for name, model_logits in logits.items():
                entry = totals[name]
                sums, predictions = metric.count(model_logits, ref_pred, labels)
                entry["sums"] = [total + value for total, value in zip(entry["sums"], sums, strict=True)]
                entry["predictions"] += predictions
                cosine = torch.stack(cosines[name]).cpu() * len(labels)
                entry["cosine"] = cosine if entry["cosine"] is None else entry["cosine"] + cosine
            seen += len(labels)
            advance()
    if recorded is not None:
        cache.store_reference(reference_key, recorded, totals[reference]["seconds"])
    elif cached is not None:
        totals[reference]["seconds"] = cache.seconds  # the time it took when it was computed
    # under torchrun each rank saw its own shard: add the counts up
    names = list(to_run)
    counts = torch.tensor([[*totals[n]["sums"], totals[n]["predictions"], totals[n]["seconds"]]
                           for n in names], dtype=torch.float64)
    # a rank that saw no images still joins every reduction, with zeros
    cosines = torch.stack([totals[n]["cosine"].double() if totals[n]["cosine"] is not None
                           else torch.zeros(blocks, dtype=torch.float64) for n in names])
    seen_total = int(all_reduce_sum(torch.tensor([seen], dtype=torch.float64)).item())
    all_reduce_sum(counts)
    all_reduce_sum(cosines)
    if seen_total == 0:
        raise StarfishError("the evaluation split gave no images: check data.eval_split and eval.max_images")
    world_size = current().size
    results = {
        name: {
            **metric.results([value.item() for value in counts[i, :-2]], int(counts[i, -2].item())),
            "block_cosine": [float(c) / seen_total for c in cosines[i]],
            "images_per_second": seen_total / max(counts[i, -1].item() / world_size, 1e-9),
        }
        for i, name in enumerate(names)
    }
    for name, key in cache_keys.items():
        if name in results:
            cache.results.setdefault(key, results[name])
    return {"images": seen_total,
            "models": {name: known.get(name) or results[same_as.get(name, name)] for name in models}}
