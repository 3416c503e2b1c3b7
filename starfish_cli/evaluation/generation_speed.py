"""How fast causal LMs generate, measured on one prompt in one process: prefill tokens/s (the prompt in one
forward pass that fills the KV cache and gives the next token's logits, as `generate` runs it) and decode
tokens/s (greedy, one token a step on the KV cache), the models taking turns round by round."""

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from starfish_cli.runtime.device import autocast

PROMPT_TOKENS = 256  # batch 1
NEW_TOKENS = 64
ROUNDS = 3  # each model's fastest round is reported (the least disturbed)


def _generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds `generate` takes for exactly `new_tokens` greedy tokens after `prompt` (KV cache on)."""
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    if prompt.device.type == "cuda":
        torch.cuda.synchronize(prompt.device)
    started = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=pad)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize(prompt.device)
    return time.perf_counter() - started


@torch.no_grad()
def generation_speed(models: Mapping[str, nn.Module], prompt: torch.Tensor, device: torch.device,
                     precision: torch.dtype, reference: str = "dense", new_tokens: int = NEW_TOKENS,
                     rounds: int = ROUNDS) -> dict[str, Any]:
    """The report's `speed.generation`: per model, prefill and decode tokens/s and their ratios to `reference`'s.
    Prefill is `generate` for one new token (the prompt's pass and one token chosen); decode is the rest of a
    `new_tokens` generation, (new_tokens − 1) tokens in (its time − prefill's)."""
    prompt = prompt[:1].to(device)
    prefill: dict[str, list[float]] = {name: [] for name in models}
    decode: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with autocast(device, precision):
        for model in models.values():  # warm-up: allocator, lazy initialisation
            _generate(model, prompt[:, :8], 2)
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                first = _generate(models[name], prompt, 1)
                whole = _generate(models[name], prompt, new_tokens)
                prefill[name].append(prompt.shape[1] / first)
                decode[name].append((new_tokens - 1) / max(whole - first, 1e-9))
    entries = {name: {"prefill_tokens_per_second": max(prefill[name]), "decode_tokens_per_second": max(decode[name])}
               for name in models}
    for entry in entries.values():
        entry["prefill_vs_dense"] = entry["prefill_tokens_per_second"] / entries[reference]["prefill_tokens_per_second"]
        entry["decode_vs_dense"] = entry["decode_tokens_per_second"] / entries[reference]["decode_tokens_per_second"]
    return {"prompt_tokens": int(prompt.shape[1]), "new_tokens": new_tokens, "batch_size": 1, "models": entries}
