import copy

import pytest
import torch
from torch import nn

from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.masks import fits_nm
from starfish_cli.evaluation.speed import (
    images_per_second, macs_per_image, measure_speed, parameter_counts, semi_structured_copy,
)


def test_macs_of_a_linear_layer_by_hand():
    layer = nn.Linear(8, 4)
    assert macs_per_image(layer, torch.randn(5, 3, 8)) == 3 * 8 * 4  # one input of 3 tokens


def test_parameter_counts_see_zeros_and_count_a_shared_tensor_once():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight[0] = 0
    assert parameter_counts(layer) == {"parameters": 8, "nonzero_parameters": 4, "weight_bytes": 32}
    tied = nn.Sequential(nn.Embedding(2, 4), nn.Linear(4, 2, bias=False))
    tied[1].weight = tied[0].weight  # a head tied to the embeddings: saved once
    assert parameter_counts(tied)["weight_bytes"] == 32


def test_two_of_four_by_hand():
    assert fits_nm(torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]]) != 0, 2, 4)
    assert not fits_nm(torch.tensor([[1.0, 1, 2, 0, 0, 0, 0, 3]]) != 0, 2, 4)
    assert not fits_nm(torch.ones(2, 6) != 0, 2, 4)  # rows not in groups of 4


def test_images_per_second_for_every_model_and_batch(reference_model):
    images = torch.randn(3, 1, 28, 28)  # fewer than the batch: tiled
    speeds = images_per_second({"a": reference_model, "b": reference_model}, images, [1, 4], torch.device("cpu"),
                               rounds=2, seconds_per_round=0.01)
    assert set(speeds) == {"a", "b"} and all(set(v) == {1, 4} and min(v.values()) > 0 for v in speeds.values())


@pytest.mark.slow
def test_measure_speed_against_dense(reference_model):
    pruned = copy.deepcopy(reference_model)
    PRUNERS.build({"name": "magnitude", "pattern": "2:4"}).prune(pruned)
    result = measure_speed({"dense": reference_model, "pruned": pruned, "healed": pruned}, torch.randn(2, 1, 28, 28),
                           [2, 1], torch.device("cpu"), torch.float32, semi_structured=True)
    assert result["batch_sizes"] == [1, 2]
    dense, healed = result["models"]["dense"], result["models"]["healed"]
    assert dense["vs_dense"] == {"1": 1.0, "2": 1.0}
    assert healed["macs_per_image"] == dense["macs_per_image"]  # zeros are multiplied on a CPU
    assert healed["nonzero_parameters"] < 0.7 * dense["nonzero_parameters"]
    assert "CUDA" in result["notes"]["healed_2:4_kernels"]  # no 2:4 kernels here, and the report says why


def test_semi_structured_needs_cuda(reference_model):
    model, why = semi_structured_copy(reference_model)
    assert model is None and "CUDA" in why


def test_a_causal_lms_speed_runs_its_head_a_chunk_of_tokens_at_a_time(monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    from starfish_cli.models import outputs
    from starfish_cli.models.causal_lm import build_model

    model = build_model("lm_reference")
    monkeypatch.setattr(outputs, "rows_per_chunk", lambda values: 50)
    rows_seen = []
    model.lm_head.register_forward_hook(lambda _m, args, _o: rows_seen.append(args[0].shape[0]))
    tokens = torch.randint(0, 2048, (4, 64))
    speeds = images_per_second({"dense": model}, tokens, [4], torch.device("cpu"), rounds=1, seconds_per_round=0.01)
    assert speeds["dense"][4] > 0 and max(rows_seen) == 50 and sum(rows_seen) % (4 * 64) == 0  # every token, by 50s
