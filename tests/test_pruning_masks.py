import pytest
import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.pruning.masks import (
    Pattern,
    check_sparsity,
    global_threshold_masks,
    fits_nm,
    layer_mask,
    measure_sparsity,
    nm_mask,
    parse_pattern,
    row_mask,
    sparsity_for_layer,
)

SCORES = torch.tensor([[4.0, 1.0, 3.0, 2.0],
                       [0.5, 8.0, 7.0, 6.0]])


def test_layer_mask_drops_lowest_scores_of_whole_matrix():
    # 50% of 8 = 4 lowest overall: 0.5, 1, 2, 3
    expected = torch.tensor([[True, False, False, False],
                             [False, True, True, True]])
    assert torch.equal(layer_mask(SCORES, 0.5), expected)


def test_row_mask_drops_lowest_within_each_row():
    expected = torch.tensor([[True, False, True, False],
                             [False, True, True, False]])
    assert torch.equal(row_mask(SCORES, 0.5), expected)


def test_nm_mask_keeps_n_largest_of_each_group():
    scores = torch.tensor([[1.0, 9.0, 3.0, 2.0, 5.0, 4.0, 8.0, 0.0]])
    expected = torch.tensor([[False, True, True, False, True, False, True, False]])
    assert torch.equal(nm_mask(scores, 2, 4), expected)
    assert fits_nm(nm_mask(torch.randn(16, 64), 2, 4), 2, 4)
    assert fits_nm(nm_mask(torch.randn(16, 64), 4, 8), 4, 8)
    assert not fits_nm(torch.ones(2, 8, dtype=torch.bool), 2, 4)


def test_nm_mask_rejects_indivisible_width():
    with pytest.raises(StarfishError, match="divisible"):
        nm_mask(torch.randn(4, 6), 2, 4)


@pytest.mark.parametrize("text,expected", [("unstructured", Pattern()), ("2:4", Pattern(2, 4)), ("4:8", Pattern(4, 8))])
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["4:2", "2:2", "0:4", "2-4", "a:b", "2:4:8", ""])
def test_parse_pattern_rejects_malformed(text):
    with pytest.raises(StarfishError, match="N:M"):
        parse_pattern(text)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "half", True])
def test_sparsity_outside_unit_interval_is_rejected(value):
    with pytest.raises(StarfishError, match=r"\[0, 1\)"):
        check_sparsity(value)


def test_sparsity_mapping_by_glob():
    mapping = {"blocks.0.*": 0.9, "*.mlp.*": 0.5}
    assert sparsity_for_layer(mapping, "blocks.0.attn.qkv") == 0.9
    assert sparsity_for_layer(mapping, "blocks.3.mlp.fc1") == 0.5
    assert sparsity_for_layer(mapping, "blocks.3.attn.qkv") == 0.0
    assert sparsity_for_layer(0.3, "anything") == 0.3


def test_global_threshold_is_one_threshold_across_layers():
    scores = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[0.5, 10.0, 0.1, 9.0]])}
    masks = global_threshold_masks(scores, 0.5)  # 4 lowest of 8: 0.1, 0.5, 1, 2
    assert torch.equal(masks["a"], torch.tensor([[False, False], [True, True]]))
    assert torch.equal(masks["b"], torch.tensor([[False, True, False, True]]))
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    dropped = torch.cat([scores[n][~masks[n]] for n in scores])
    assert kept.min() > dropped.max()


def test_measure_sparsity_counts_zeros(reference_model):
    import copy

    from starfish_cli.models import structure_of
    from starfish_cli.pruning.masks import apply_masks

    model = copy.deepcopy(reference_model)
    layers = structure_of(model).prunable_layers()
    masks = {name: layer_mask(layer.weight.abs(), 0.25) for name, layer in layers.items()}
    apply_masks(layers, masks)
    measured = measure_sparsity(model, layers)
    assert measured["prunable"] == pytest.approx(0.25, abs=1e-4)
    assert all(v == pytest.approx(0.25, abs=1e-3) for v in measured["per_layer"].values())
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert measured["overall"] == all_zeros / sum(p.numel() for p in model.parameters())
    assert measured["total_parameters"] > measured["prunable_weights"]  # embeddings, norms, head stay dense
