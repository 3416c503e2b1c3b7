"""How fast causal LMs generate, measured on one prompt in one process: prefill tokens/s (the prompt in one
forward pass that fills the KV cache and gives the first new token, as `generate` runs it) and decode tokens/s
(greedy, one token a step on the KV cache), both timed inside one `generate` call by a streamer that notes when
the prompt goes in and when each token comes out; the models take turns round by round."""

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from starfish_cli.runtime.device import autocast

PROMPT_TOKENS = 256  # batch 1
NEW_TOKENS = 64
ROUNDS = 5  # each model's fastest round is reported (the least disturbed)


class TokenClock:
    """A `generate` streamer (transformers' BaseStreamer interface): the time the prompt was handed over and the
    time each new token came out."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, _tokens) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def timed_generation(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) of one greedy generation of exactly `new_tokens` tokens."""
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    clock = TokenClock(prompt.device)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=pad, streamer=clock)
    prompt_in, first, last = clock.times[0], clock.times[1], clock.times[-1]
    return first - prompt_in, (last - first) / max(len(clock.times) - 2, 1)


@torch.no_grad()
def generation_speed(models: Mapping[str, nn.Module], prompt: torch.Tensor, device: torch.device,
                     precision: torch.dtype, reference: str = "dense", new_tokens: int = NEW_TOKENS,
                     rounds: int = ROUNDS) -> dict[str, Any]:
    """The report's `speed.generation`: per model, prefill and decode tokens/s (each its fastest round) and their
    ratios to `reference`'s."""
    prompt = prompt[:1].to(device)
    prefill: dict[str, list[float]] = {name: [] for name in models}
    decode: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with autocast(device, precision):
        for model in models.values():  # warm-up: allocator, lazy initialisation
            timed_generation(model, prompt, 2)
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                prefill_seconds, token_seconds = timed_generation(models[name], prompt, new_tokens)
                prefill[name].append(prompt.shape[1] / prefill_seconds)
                decode[name].append(1 / token_seconds)
    entries = {name: {"prefill_tokens_per_second": max(prefill[name]), "decode_tokens_per_second": max(decode[name])}
               for name in models}
    for entry in entries.values():
        entry["prefill_vs_dense"] = entry["prefill_tokens_per_second"] / entries[reference]["prefill_tokens_per_second"]
        entry["decode_vs_dense"] = entry["decode_tokens_per_second"] / entries[reference]["decode_tokens_per_second"]
    return {"prompt_tokens": int(prompt.shape[1]), "new_tokens": new_tokens, "batch_size": 1, "rounds": rounds,
            "models": entries}
