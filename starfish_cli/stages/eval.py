"""The eval step: the dense, pruned and healed models side by side on the evaluation items (with a
sweep's shared work reused), and optionally their speed and size."""

import json
from typing import Any

from torch import nn

from starfish_cli.data import loader
from starfish_cli.evaluation.compare import evaluate
from starfish_cli.evaluation.generation_speed import NEW_TOKENS, PROMPT_TOKENS, generation_speed
from starfish_cli.evaluation.speed import measure_speed
from starfish_cli.models import structure_of
from starfish_cli.runtime.device import measure
from starfish_cli.stages.settings import plain
from starfish_cli.stages.values import Context, Evaluation, EvaluationData, Healed, Pruned


def evaluate_models(context: Context, pruned: Pruned, healed: Healed, data: EvaluationData,
                    workers: int) -> Evaluation:
    cfg = context.cfg
    models = {"dense": context.dense, "pruned": pruned.model, "healed": healed.model}
    if cfg.compile:
        for model in models.values():
            structure_of(model).compile_blocks()
    timing: dict[str, Any] = {}
    with measure("eval", context.device, timing):
        results = evaluate(models, data.images, context.device, batch_size=int(cfg.eval.batch_size),
                           num_workers=workers, precision=context.precision,
                           cache_keys=cache_keys(context, pruned, healed, data), cache=context.sweep_cache, record_reference=context.sweep_cache is not None,
                           finish=data.finish)
        zero_shot = None
        if data.zero_shot is not None and context.world.is_main:  # one process runs the tasks: rank 0 reports
            tokenizer = structure_of(context.dense).preprocessing()["tokenizer"]
            zero_shot = data.zero_shot.evaluate(models, tokenizer, context.device, context.precision, int(cfg.seed))
    speed = measure_models_speed(context, models, data, pruned) if cfg.eval.speed else None
    return Evaluation(results, data.source, timing["eval"], speed, zero_shot)


def cache_keys(context: Context, pruned: Pruned, healed: Healed, data: EvaluationData) -> dict[str, str]:
    """What each model's results depend on: a sweep re-evaluates the same dense model, and each pruned
    checkpoint under every healer (a healer that changes no weight shares the pruned model's results)."""
    cfg = context.cfg
    size = len(data.images) if hasattr(data.images, "__len__") else None
    dense_key = json.dumps([plain(cfg.model), plain(cfg.data), cfg.eval.max_images, size,
                            int(cfg.eval.batch_size), str(context.precision), str(context.device)], sort_keys=True)
    pruned_key = dense_key + pruned.metadata["masks_digest"] + json.dumps(pruned.metadata["pruner"])
    keys = {"dense": dense_key, "pruned": pruned_key}
    if not healed.metadata["changes_weights"]:
        keys["healed"] = pruned_key
    return keys


def measure_models_speed(context: Context, models: dict[str, nn.Module], data: EvaluationData,
                         pruned: Pruned) -> dict[str, Any]:
    """Images/s at batch 1 and at the batch the evaluation ran (the eval batch size, or every image when
    there are fewer), on the first evaluation images; 2:4 kernels too for a 2:4 model on CUDA."""
    batch_size = int(context.cfg.eval.batch_size)
    _indices, pixels, _labels = next(iter(loader(data.images, batch_size)))
    images = data.finish(pixels) if data.finish is not None else pixels
    dense = structure_of(context.dense)
    # a language model's speed is its generation's (a prompt, then tokens): windows/s would add minutes, not news
    batch_sizes = [] if dense.generates else [1, len(images)]
    speed = measure_speed(models, images, batch_sizes, context.device, context.precision,
                          semi_structured=pruned.metadata["pruner"].get("pattern") == "2:4")
    if dense.generates:
        tokens = min(PROMPT_TOKENS, (dense.context() or PROMPT_TOKENS + NEW_TOKENS) - NEW_TOKENS)  # within its context
        prompt = images[:1].repeat(1, -(-tokens // images.shape[1]))[:, :tokens]
        speed["generation"] = generation_speed(models, prompt, context.device, context.precision)
    return speed
