"""A language model's generation speed: prefill and decode timed inside one greedy `generate` call."""

import copy

import pytest
import torch

pytest.importorskip("transformers")

from starfish_cli.evaluation import generation_speed as speed  # noqa: E402
from starfish_cli.models import build_model  # noqa: E402

CPU = torch.device("cpu")


def test_the_clock_sees_the_prompt_and_every_new_token(monkeypatch):
    model = build_model({"family": "causal_lm", "name": "lm_reference"})
    clocks = []
    original = speed.TokenClock

    class Recording(original):
        def __init__(self, device):
            super().__init__(device)
            clocks.append(self)

    monkeypatch.setattr(speed, "TokenClock", Recording)
    prompt = torch.randint(0, 2048, (1, 16), generator=torch.Generator().manual_seed(0))
    prefill, per_token = speed.timed_generation(model, prompt, 5)
    assert len(clocks) == 1 and len(clocks[0].times) == 1 + 5  # the prompt, then 5 tokens (min_new_tokens)
    assert clocks[0].times == sorted(clocks[0].times) and prefill > 0 and per_token > 0


def test_speeds_are_each_models_fastest_round_against_the_reference():
    model = build_model({"family": "causal_lm", "name": "lm_reference"})
    prompt = torch.randint(0, 2048, (2, 16), generator=torch.Generator().manual_seed(0))
    result = speed.generation_speed({"dense": model, "copy": copy.deepcopy(model)}, prompt, CPU, torch.float32,
                                    new_tokens=4, rounds=2)
    assert result["prompt_tokens"] == 16 and result["batch_size"] == 1 and result["new_tokens"] == 4
    dense, other = result["models"]["dense"], result["models"]["copy"]
    assert dense["prefill_vs_dense"] == 1.0 and dense["decode_vs_dense"] == 1.0
    assert other["prefill_vs_dense"] == other["prefill_tokens_per_second"] / dense["prefill_tokens_per_second"]
    assert other["decode_tokens_per_second"] > 0
