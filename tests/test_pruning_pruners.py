import copy

import pytest
import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.base import input_norms
from starfish_cli.pruning.masks import fits_nm
from starfish_cli.pruning.wanda import wanda_scores


def test_wanda_scores_by_hand():
    weight = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    norms = torch.tensor([2.0, 0.25])
    assert torch.equal(wanda_scores(weight, norms), torch.tensor([[2.0, 0.5], [6.0, 0.125]]))


def test_input_norms_match_a_direct_computation(reference_model, calibration_batches):
    model = copy.deepcopy(reference_model)
    layers = structure_of(model).prunable_layers()
    norms = input_norms(model, layers, calibration_batches)
    captured = []
    handle = layers["blocks.2.mlp.fc2"].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    for batch in calibration_batches:
        model(batch)
    handle.remove()
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).double()
    assert torch.allclose(norms["blocks.2.mlp.fc2"].double(), x.pow(2).sum(0).sqrt(), rtol=1e-5)


@pytest.mark.parametrize("name", ["magnitude", "wanda", "random"])
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_pruners_reach_target_sparsity_only_on_block_linears(reference_model, calibration_batches, name, sparsity):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": name, "sparsity": sparsity}).prune(model, calibration_batches)
    for layer_name, layer in structure_of(model).prunable_layers().items():
        assert (layer.weight == 0).float().mean().item() == pytest.approx(sparsity, abs=2e-3)
        assert torch.equal(layer.weight != 0, masks[layer_name] & (reference_model.get_submodule(layer_name).weight != 0))
    dense = dict(reference_model.named_parameters())
    for param_name, param in model.named_parameters():
        if not (param_name.startswith("blocks.") and param_name.endswith("weight") and param.ndim == 2):
            assert torch.equal(param, dense[param_name]), param_name


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_pattern_masks_are_valid(reference_model, calibration_batches, pattern, n, m):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "wanda", "pattern": pattern}).prune(model, calibration_batches)
    assert all(fits_nm(mask, n, m) for mask in masks.values())
    assert all(fits_nm(layer.weight != 0, n, m) for layer in structure_of(model).prunable_layers().values())


def test_wanda_keeps_outputs_closer_than_magnitude_and_random(reference_model, calibration_batches):
    x = calibration_batches[0]
    dense_states = structure_of(reference_model).forward_with_states(x)[1]
    errors = {}
    for name in ("random", "magnitude", "wanda"):
        model = copy.deepcopy(reference_model)
        PRUNERS.build({"name": name, "sparsity": 0.5}).prune(model, calibration_batches)
        pruned_states = structure_of(model).forward_with_states(x)[1]
        errors[name] = (pruned_states[-1] - dense_states[-1]).norm().item()
    assert errors["wanda"] < errors["random"] and errors["magnitude"] < errors["random"]


def test_random_pruner_is_seeded(reference_model):
    masks = [PRUNERS.build({"name": "random"}, seed=s).prune(copy.deepcopy(reference_model)) for s in (0, 0, 1)]
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert not all(torch.equal(masks[0][k], masks[2][k]) for k in masks[0])


def test_unknown_pruner_and_option_are_one_line_errors():
    with pytest.raises(StarfishError, match="unknown pruner 'nope': choose one of global_magnitude, magnitude, random, sparsegpt, structured, wanda"):
        PRUNERS.build({"name": "nope"})
    with pytest.raises(StarfishError, match="no option 'sparcity'"):
        PRUNERS.build({"name": "wanda", "sparcity": 0.5})


def test_wanda_comparison_row_or_layer(reference_model, calibration_batches):
    from starfish_cli.pruning.masks import layer_mask, row_mask

    norms = input_norms(reference_model, structure_of(reference_model).prunable_layers(), calibration_batches)
    fc1 = "blocks.1.mlp.fc1"
    scores = wanda_scores(reference_model.get_submodule(fc1).weight, norms[fc1])
    for comparison, select in (("row", row_mask), ("layer", layer_mask)):
        pruner = PRUNERS.build({"name": "wanda", "sparsity": 0.75, "comparison": comparison})
        masks = pruner.prune(copy.deepcopy(reference_model), calibration_batches)
        assert torch.equal(masks[fc1], select(scores, 0.75)), comparison
        assert pruner.describe()["comparison"] == comparison
    per_row_kept = masks[fc1].sum(1)  # layer-wide comparison: rows keep different counts
    assert per_row_kept.min() < per_row_kept.max()
    with pytest.raises(StarfishError, match="pruner.comparison='column': choose one of row, layer"):
        PRUNERS.build({"name": "wanda", "comparison": "column"})


def test_owl_sparsities_average_to_the_target_over_prunable_weights():
    from starfish_cli.pruning.allocation import owl_sparsities

    sizes = [100, 300, 100, 500]
    sparsities = owl_sparsities([0.01, 0.04, 0.02, 0.03], sizes, target=0.9, spread=0.05)
    assert sum(s * n for s, n in zip(sparsities, sizes)) / sum(sizes) == pytest.approx(0.9)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.1)
    assert sparsities.index(min(sparsities)) == 1 and sparsities.index(max(sparsities)) == 0  # most outliers keep most
    assert owl_sparsities([0.02, 0.02], [1, 3], target=0.7, spread=0.05) == pytest.approx([0.7, 0.7])
    with pytest.raises(StarfishError, match="outside"):
        owl_sparsities([0.0, 1.0], [1, 1], target=0.97, spread=0.2)


def test_owl_allocation_keeps_the_overall_sparsity_and_varies_it_by_block(reference_model, calibration_batches):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "wanda", "sparsity": 0.75, "allocation": "owl"}).prune(model, calibration_batches)
    total = sum(mask.numel() for mask in masks.values())
    assert 1 - sum(mask.sum().item() for mask in masks.values()) / total == pytest.approx(0.75, abs=0.002)
    structure = structure_of(model)
    per_block = [1 - sum(masks[name].sum().item() for name in structure.block_layers(i))
                 / sum(masks[name].numel() for name in structure.block_layers(i)) for i in range(len(structure.blocks))]
    assert max(per_block) - min(per_block) == pytest.approx(0.16, abs=0.005)
    uniform = PRUNERS.build({"name": "wanda", "sparsity": 0.75}).prune(copy.deepcopy(reference_model), calibration_batches)
    assert all(torch.equal(uniform[name], mask) for name, mask in
               PRUNERS.build({"name": "wanda", "sparsity": 0.75, "allocation_spread": 0.0, "allocation": "owl"})
               .prune(copy.deepcopy(reference_model), calibration_batches).items())


@pytest.mark.parametrize("options,message", [
    ({"allocation": "owl", "pattern": "2:4"}, "pattern=unstructured"),
    ({"allocation": "random"}, "pruner.allocation='random'"),
    ({"allocation": "owl", "allocation_spread": 0.6}, "allocation_spread=0.6"),
])
def test_bad_allocations_are_one_line(options, message):
    with pytest.raises(StarfishError, match=message.replace("(", r"\(").replace("[", r"\[")):
        PRUNERS.build({"name": "wanda", "sparsity": 0.5, **options})


def test_calibration_statistics_stop_after_the_last_block():
    """A causal LM's head (vocabulary-wide logits of every calibration token) feeds no pruned layer: it never runs."""
    pytest.importorskip("transformers")
    from starfish_cli.models.causal_lm import build_model

    model = build_model("lm_reference")
    layers = structure_of(model).prunable_layers()
    calibration = [torch.randint(0, 2048, (4, 32), generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    head_calls, captured = [], []
    handles = [model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))]
    norms = input_norms(model, layers, calibration)
    assert not head_calls and set(norms) == set(layers)
    last = "model.layers.3.mlp.down_proj"  # the last block's last layer: its statistics are complete
    handles.append(layers[last].register_forward_hook(lambda m, i, o: captured.append(i[0])))
    with torch.no_grad():
        for batch in calibration:
            model(input_ids=batch)
    for handle in handles:
        handle.remove()
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).double()
    assert torch.allclose(norms[last].double(), x.pow(2).sum(0).sqrt(), rtol=1e-5)
