"""Every healer trains exactly the parameters it claims, and keeps pruned weights at zero."""

import copy

import pytest
import torch

from starfish_cli.data.images import ImageTensors
from starfish_cli.healing import HEALERS
from starfish_cli.healing.base import norm_and_bias_names, pruned_weight_names
from starfish_cli.healing.states import collect_states
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS

CPU = torch.device("cpu")


@pytest.fixture()
def pruned(reference_model):
    model = copy.deepcopy(reference_model)
    return model, PRUNERS.build({"name": "magnitude", "sparsity": 0.75}).prune(model)


@pytest.fixture(scope="module")
def labelled_calibration(reference_model, fmnist):
    from starfish_cli.models.vision import model_transform

    return ImageTensors(fmnist.load("train").select(range(32)), model_transform(reference_model), 1, with_labels=True)


@pytest.mark.parametrize("node,expected", [
    ({"name": "starfish"}, "pruned"),
    ({"name": "starfish", "states": ["blocks", "attn", "mlp", "final_norm"], "loss": "mse", "kd_weight": 0.5}, "pruned"),
    ({"name": "starfish", "mode": "blockwise"}, "pruned"),
    ({"name": "kd", "temperature": 2.0}, "pruned"),
    ({"name": "norm"}, "norms"),
    ({"name": "norm", "mode": "blockwise"}, "norms"),
    ({"name": "supervised"}, "pruned"),
])
def test_healer_trains_what_it_claims(reference_model, pruned, calibration_images, labelled_calibration, node, expected):
    model, masks = pruned
    before = {n: p.clone() for n, p in model.named_parameters()}
    healer = HEALERS.build({**node, "epochs": 1, "batch_size": 16})
    data = labelled_calibration if healer.labels_used else calibration_images
    result = healer.heal(model, reference_model, masks, data, CPU)
    claimed = set(pruned_weight_names(model) if expected == "pruned" else norm_and_bias_names(model))
    assert set(result.trained_parameters) == claimed
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == claimed
    for name, layer in structure_of(model).prunable_layers().items():
        assert torch.all(layer.weight[~masks[name]] == 0), name
    assert healer.labels_used == (node["name"] == "supervised")
    assert result.steps > 0 and len(result.loss_history) == result.steps


def test_branch_and_norm_states_are_collected(reference_model, calibration_batches):
    _, states = collect_states(reference_model, calibration_batches[0][:4], ("blocks", "attn", "mlp", "final_norm"))
    assert len(states) == 6 + 6 + 6 + 1 and all(s.shape == (4, 50, 128) for s in states)


def test_blockwise_requires_block_states():
    from starfish_cli.runtime.errors import StarfishError

    with pytest.raises(StarfishError, match="blockwise"):
        HEALERS.build({"name": "starfish", "mode": "blockwise", "states": ["attn"]})


def test_a_fixed_order_epoch_is_collated_once_and_replayed():
    from starfish_cli.healing.loop import ReplayedBatches

    collated = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, index):
            collated.append(index)
            return index, torch.full((2,), float(index))

    batches = ReplayedBatches(torch.utils.data.DataLoader(Counting(), batch_size=4))
    first = list(batches)
    next(iter(batches))  # an epoch cut short after a whole one: the kept batches, nothing collated
    second = list(batches)
    assert len(batches) == 2 and len(collated) == 6
    assert all(a is b for a, b in zip(first, second, strict=True))
    partial = ReplayedBatches(torch.utils.data.DataLoader(Counting(), batch_size=4))
    next(iter(partial))  # a partial first epoch keeps nothing: the next one reads the loader again
    assert len(list(partial)) == 2 and len(collated) == 6 + 4 + 6


def test_pruned_gradients_need_no_mask(reference_model, pruned, calibration_images):
    """Re-masking after each step alone gives the kept weights the values masked gradients give."""
    model, masks = pruned
    results = []
    for masked_gradients in (False, True):
        student = copy.deepcopy(model)
        hooks = [structure_of(student).prunable_layers()[name].weight.register_hook(
            lambda grad, keep=mask: grad * keep) for name, mask in masks.items()] if masked_gradients else []
        HEALERS.build({"name": "starfish", "epochs": 1, "batch_size": 32}).heal(
            student, reference_model, masks, calibration_images, torch.device("cpu"))
        for hook in hooks:
            hook.remove()
        results.append(student.state_dict())
    assert all(torch.equal(results[0][name], results[1][name]) for name in results[0])
