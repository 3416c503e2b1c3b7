import copy

import pytest
import torch

from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.magnitude import magnitude_scores
from starfish_cli.pruning.masks import Pattern, fits_nm, layer_mask, nm_mask, parse_pattern, row_mask
from starfish_cli.pruning.sparsegpt import input_hessian, sparsegpt_prune
from starfish_cli.pruning.wanda import wanda_scores

def reconstruction_error(weight, new_weight, x):
    return (x @ weight.T - x @ new_weight.T).norm().item()


@pytest.fixture(scope="module")
def every_layer_inputs(reference_model, calibration_batches):
    captured = {}
    handles = [layer.register_forward_hook(lambda m, i, o, n=name: captured.setdefault(n, []).append(
        i[0].reshape(-1, i[0].shape[-1]))) for name, layer in structure_of(reference_model).prunable_layers().items()]
    with torch.no_grad():
        for batch in calibration_batches:
            reference_model(batch)
    for handle in handles:
        handle.remove()
    return {name: (reference_model.get_submodule(name).weight.detach(), torch.cat(xs)) for name, xs in captured.items()}


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_beats_wanda_beats_magnitude_on_every_layer(every_layer_inputs, pattern):
    """‖WX − ŴX‖ at 50%: SparseGPT ≤ Wanda ≤ magnitude, scores compared within the same groups
    (per output row for unstructured, per group of 4 for 2:4)."""
    parsed = parse_pattern(pattern)

    def select(scores):
        return nm_mask(scores, parsed.n, parsed.m) if parsed.is_nm else row_mask(scores, 0.5)

    for name, (weight, x) in every_layer_inputs.items():
        norms = x.pow(2).sum(0).sqrt()
        magnitude = weight * select(magnitude_scores(weight))
        wanda = weight * select(wanda_scores(weight, norms))
        sparsegpt, mask = sparsegpt_prune(weight, input_hessian([x], x.shape[1])[0], 0.5, parsed)
        errors = [reconstruction_error(weight, w, x) for w in (sparsegpt, wanda, magnitude)]
        assert errors[0] <= errors[1] <= errors[2], (name, errors)
        assert (sparsegpt == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
        assert torch.all(sparsegpt[~mask] == 0)
        if parsed.is_nm:
            assert fits_nm(mask, 2, 4)


def test_sparsegpt_beats_the_shipped_wanda_and_magnitude_pruners(every_layer_inputs):
    """As the pruners ship (Wanda per row, magnitude per layer), SparseGPT still wins on every layer."""
    for name, (weight, x) in every_layer_inputs.items():
        norms = x.pow(2).sum(0).sqrt()
        sparsegpt, _ = sparsegpt_prune(weight, input_hessian([x], x.shape[1])[0], 0.5, Pattern())
        best_other = min(reconstruction_error(weight, weight * row_mask(wanda_scores(weight, norms), 0.5), x),
                         reconstruction_error(weight, weight * layer_mask(magnitude_scores(weight), 0.5), x))
        assert reconstruction_error(weight, sparsegpt, x) <= best_other, name


def test_input_hessian_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert torch.allclose(input_hessian([x], 2)[0], 2 * x.T @ x / 2)


@pytest.mark.parametrize("pattern", ["unstructured", "4:8"])
def test_sparsegpt_pruner_on_whole_model(reference_model, calibration_batches, pattern):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "sparsegpt", "sparsity": 0.5, "pattern": pattern}).prune(model, calibration_batches)
    for name, layer in structure_of(model).prunable_layers().items():
        assert torch.all(layer.weight[~masks[name]] == 0)
        assert (~masks[name]).float().mean().item() == pytest.approx(0.5, abs=0.01)
        if pattern == "4:8":
            assert fits_nm(masks[name], 4, 8)
    changed = [n for n, layer in structure_of(model).prunable_layers().items()
               if not torch.equal(layer.weight[masks[n]], reference_model.get_submodule(n).weight[masks[n]])]
    assert changed, "SparseGPT updates the kept weights"


def test_global_magnitude_leaves_one_threshold(reference_model):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "global_magnitude", "sparsity": 0.6}).prune(model)
    layers = structure_of(reference_model).prunable_layers()
    kept = torch.cat([layers[n].weight.abs()[masks[n]] for n in masks])
    dropped = torch.cat([layers[n].weight.abs()[~masks[n]] for n in masks])
    assert kept.min() >= dropped.max()
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) / total == pytest.approx(0.6, abs=1e-4)
    per_layer = [(~m).float().mean().item() for m in masks.values()]
    assert max(per_layer) > min(per_layer)  # not a per-layer threshold
