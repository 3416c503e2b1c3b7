"""Evaluation: every model on the same batches side by side — the family's metric, agreement with the
reference model, per-block alignment, throughput — with a sweep's shared work reused."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from starfish_cli.data.loader import loader
from starfish_cli.evaluation.cache import ReferenceRecording, SweepCache
from starfish_cli.evaluation.metrics import METRICS
from starfish_cli.evaluation.side_by_side import Clock, SideBySide
from starfish_cli.evaluation.totals import Totals, reduce_across_ranks
from starfish_cli.models import structure_of
from starfish_cli.runtime.distributed import shard
from starfish_cli.runtime.progress import progress_bar


@dataclass
class Plan:
    """Which models run, and where the others' results come from."""

    names: list[str]  # every model, in the caller's order
    to_run: dict[str, nn.Module]
    known: dict[str, dict]  # name → finished results from the cache
    same_as: dict[str, str]  # name → the model under the same key that runs for it
    keys: dict[str, str]  # the other models' keys: their finished results are stored under them
    reference_key: str | None  # the reference's outputs per batch are what is reused, not its results

    def results(self, own: Mapping[str, dict]) -> dict[str, dict]:
        return {name: self.known.get(name) or own[self.same_as.get(name, name)] for name in self.names}


def plan(models: Mapping[str, nn.Module], reference: str, cache_keys: Mapping[str, str] | None,
         cache: SweepCache) -> Plan:
    """The reference always runs (or replays its cached outputs): the others are measured against it."""
    keys = dict(cache_keys or {})
    reference_key = keys.pop(reference, None)
    known = cache.results_for(keys)
    # models under one key are the same weights (e.g. healer=none): run the first, share its results
    first_with_key: dict[str, str] = {}
    same_as = {}
    for name, key in keys.items():
        if name in models and name not in known:
            same_as[name] = first_with_key.setdefault(key, name)
    to_run = {name: model for name, model in models.items()
              if name not in known and same_as.get(name, name) == name}
    return Plan(list(models), to_run, known, same_as, keys, reference_key)


@torch.no_grad()
def evaluate(models: Mapping[str, nn.Module], dataset: torch.utils.data.Dataset, device: torch.device,
             batch_size: int = 256, reference: str = "dense", num_workers: int = 0,
             precision: torch.dtype = torch.float32, cache_keys: Mapping[str, str] | None = None,
             cache: SweepCache | None = None, record_reference: bool = False,
             finish: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Run every model on the same labelled batches; alignment and agreement are against `reference`.

    Under torchrun each rank evaluates its shard and the counts are summed. `cache_keys` name what
    a model's results depend on (weights, data, settings): the reference's per-batch block states and
    the other keyed models' finished results are reused from `cache` when the key matches. The
    reference's states are recorded only with `record_reference` (a sweep, where later runs reuse
    them) and only while they fit the cache's cap, so one run's memory does not grow with the
    images. Outputs (a causal LM's vocabulary-wide logits) are made and counted a chunk of rows at a
    time, never a whole batch's. `finish` turns each batch into the models' inputs on the device (e.g. uint8 pixels →
    normalized floats: a quarter of the bytes through the loader).

    Returns `images` (items: images or token windows) and, per model: the family metric's results
    (classifiers: top1, top5, agreement in percent; causal LMs: perplexity, top1, agreement,
    tokens), block_cosine (per block), images_per_second (items per second).
    """
    cache = cache if cache is not None else SweepCache()  # none given: nothing shared with another call
    chosen = plan(models, reference, cache_keys, cache)
    structure = structure_of(models[reference])
    clock = Clock(device, precision, chosen.to_run)
    metric = METRICS[structure.metric]()
    side_by_side = SideBySide({name: structure_of(model) for name, model in chosen.to_run.items()},
                              reference, len(structure.blocks), clock, metric)
    totals = Totals(chosen.to_run, metric, len(structure.blocks))
    cached = cache.reference_for(chosen.reference_key)
    recording = cache.start_recording(chosen.reference_key) if record_reference else None
    batches = loader(shard(dataset), batch_size, num_workers=num_workers, device=device)
    with progress_bar("evaluating", len(batches) if hasattr(batches.dataset, "__len__") else None) as advance:
        for number, (_indices, inputs, labels) in enumerate(batches):
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device)
            if finish is not None:
                inputs = finish(inputs)
            _one_batch(side_by_side, totals, recording, inputs, labels, cached[number] if cached is not None else None)
            advance()
    if recording is not None:
        recording.finish(clock.seconds[reference])
    if cached is not None:
        clock.seconds[reference] = cache.seconds  # the time it took when it was computed
    seen, results = reduce_across_ranks(totals, clock.seconds)
    cache.store_results(chosen.keys, results)
    return {"images": seen, "models": chosen.results(results)}


def _one_batch(side_by_side: SideBySide, totals: Totals, recording: ReferenceRecording | None,
               inputs: torch.Tensor, labels: torch.Tensor, cached: list | None) -> None:
    """The reference's states go to the host only while the recording lasts: past the cap nothing keeps them."""
    outputs = side_by_side.run(inputs, labels, cached, keep_reference=recording is not None and recording.active)
    if recording is not None:
        recording.add(outputs.reference_states)
    totals.add(outputs, len(labels))
