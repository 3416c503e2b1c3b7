"""What a run logs, from the plain values its steps return: pure functions from report-shaped dicts
to `{name: value}` scalars."""

from collections.abc import Mapping, Sequence
from typing import Any

EVAL_METRICS = ("top1", "top5", "perplexity", "agreement")


def sparsity_metrics(sparsity: Mapping[str, Any]) -> dict[str, float]:
    """`sparsity/<layer>` per prunable layer, and `sparsity/prunable` and `sparsity/overall`."""
    metrics = {f"sparsity/{layer}": float(value) for layer, value in sparsity.get("per_layer", {}).items()}
    for key in ("prunable", "overall"):
        if sparsity.get(key) is not None:
            metrics[f"sparsity/{key}"] = float(sparsity[key])
    return metrics


def heal_losses(loss_history: Sequence[float] | None) -> list[tuple[int, dict[str, float]]]:
    """`heal/loss` per optimizer step, steps counted from 1."""
    return [(step, {"heal/loss": float(loss)}) for step, loss in enumerate(loss_history or (), start=1)]


def eval_metrics(models: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """`eval/<model>/<metric>` for each evaluated model's final metrics that are numbers."""
    return {f"eval/{model}/{metric}": float(results[metric]) for model, results in models.items()
            for metric in EVAL_METRICS
            if isinstance(results.get(metric), (int, float)) and not isinstance(results.get(metric), bool)}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; lists stay values."""
    if not isinstance(config, Mapping):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return {key.rstrip("."): value for key, value in flat.items()}
