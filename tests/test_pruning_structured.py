"""Structured pruning: exact slicing of timm's Attention and Mlp, unit scores, block vs global
ranking, healers on the smaller model, and structured checkpoints through the CLI."""

import copy

import pytest
import timm
import torch

from conftest import SHRUNK, needs_fmnist, read_json, run_in_process
from starfish_cli.artifacts.checkpoint import load_checkpoint
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.models.base import Units
from starfish_cli.healing import HEALERS
from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.masks import measure_sparsity
from starfish_cli.pruning.structured import (least_squares_fold, lowest_overall, lowest_per_block, removal_order,
                                             unit_scores, weight_scores)

REMOVED = {0: ([1, 3], [0, 7, 100]), 2: ([0], []), 5: ([0, 1, 2], list(range(500)))}  # block: (heads, neurons)


def zero_units(model, removed):
    """Zero the rows (and biases) that feed each removed head and neuron: the full model then computes
    what the sliced one does."""
    structure = structure_of(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for index, (heads, neurons) in removed.items():
            units = structure.units(index)
            for kind, chosen in (("heads", heads), ("neurons", neurons)):
                for layer, rows in units[kind].rows.items():
                    modules[layer].weight[rows[chosen].reshape(-1)] = 0
                    modules[layer].bias[rows[chosen].reshape(-1)] = 0


@pytest.mark.parametrize("variant", ["reference", "sdpa_off", "qk_norm"])
def test_slicing_keeps_every_block_output_when_removed_units_are_zero(reference_model, variant):
    model = (timm.create_model("vit_fmnist", pretrained=False, qk_norm=True, qkv_bias=True).eval()
             if variant == "qk_norm" else copy.deepcopy(reference_model))
    for block in model.blocks:
        block.attn.fused_attn = variant != "sdpa_off"
    zero_units(model, REMOVED)
    sliced = copy.deepcopy(model)
    for index, (heads, neurons) in REMOVED.items():
        structure_of(sliced).remove_units(index, heads=heads, neurons=neurons)
    tokens = torch.randn(4, 50, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for full, small in zip(model.blocks, sliced.blocks):
            torch.testing.assert_close(small(tokens), full(tokens), atol=1e-6, rtol=1e-5)
    attn = sliced.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.attn_dim, attn.qkv.weight.shape, attn.proj.weight.shape) == \
        (2, 32, 64, (192, 128), (128, 64))
    assert attn.scale == 32 ** -0.5 and sliced.blocks[5].mlp.fc2.in_features == 12


def test_resize_builds_the_shapes_a_structured_checkpoint_loads_into(reference_model):
    pruned = copy.deepcopy(reference_model)
    full = structure_of(pruned).block_sizes()
    assert full["blocks.0"] == {"heads": 4, "mlp_hidden": 512}
    for index, (heads, neurons) in REMOVED.items():
        structure_of(pruned).remove_units(index, heads=heads, neurons=neurons)
    sizes = structure_of(pruned).block_sizes()
    assert sizes != full
    assert sizes["blocks.0"] == {"heads": 2, "mlp_hidden": 509} and sizes["blocks.1"] == {"heads": 4, "mlp_hidden": 512}
    fresh = timm.create_model("vit_fmnist", pretrained=False).eval()
    structure_of(fresh).resize(sizes)
    fresh.load_state_dict(pruned.state_dict())
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), pruned(images))
    with pytest.raises(StarfishError, match="does not fit"):
        structure_of(timm.create_model("vit_fmnist", pretrained=False)).resize({"blocks.0": {"heads": 9, "mlp_hidden": 1}})
    measured = measure_sparsity(pruned, structure_of(pruned).prunable_layers(), reference_model)
    removed_share = (2 + 1 + 3) * 4 * 32 * 128 + (3 + 500) * 2 * 128  # qkv+proj per head, fc1+fc2 per neuron
    assert measured["prunable"] == pytest.approx(removed_share / measured["prunable_weights"])
    assert measured["total_parameters"] - measured["remaining_parameters"] > removed_share  # biases go too


def test_criteria_rank_a_hand_made_mlp_differently():
    """Three neurons: 0 has the largest weights but a constant activation, 1 reads the large input
    feature, 2 fluctuates most."""
    fc1 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    fc2 = torch.tensor([[2.0, 1.0, 1.0]])
    inputs = torch.tensor([[0.1, 3.0]] * 4)
    hidden = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 2.0], [1.0, -1.0, -2.0]])
    moments = {name: (len(x), x.double().sum(0), x.double().pow(2).sum(0)) for name, x in (("fc1", inputs), ("fc2", hidden))}
    units = Units(3, {"fc1": torch.arange(3).unsqueeze(1)}, {"fc2": torch.arange(3).unsqueeze(1)})
    expected = {"magnitude": [8.0, 2.0, 1.5],  # Σ W² of the row and the column
                "activation": [2 * 0.2 + 2 * 2, 1 * 6 + 1 * 2, 0.5 * 0.2 + 0.5 * 6 + 8 ** 0.5],  # Σ |W|·‖x‖
                "fluctuation": [0.0, 1.0, 2.0]}  # Var(h_j)·‖W_:,j‖²
    for criterion, values in expected.items():
        scores = {name: weight_scores(criterion, weight, moments[name]) for name, weight in (("fc1", fc1), ("fc2", fc2))}
        got = unit_scores(units, scores, rows=criterion != "fluctuation")
        assert got.tolist() == pytest.approx(values), criterion
    orders = {tuple(torch.argsort(torch.tensor(values)).tolist()) for values in expected.values()}
    assert len(orders) == 3


def test_global_ranking_compares_standardized_blocks_and_keeps_one_unit_per_block():
    scores = [torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])]
    assert lowest_per_block(scores, 0.5, "pruner.heads=0.5", "heads") == [[0, 1], [0, 1]]
    assert lowest_overall(scores, 0.5, "pruner.heads=0.5", "heads") == [[0, 1, 2], [0]]  # one outlier: the rest are alike
    flat = [torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1.0, 10.0, 10.0, 10.0])]  # block 0 all 0 once standardized
    assert lowest_overall(flat, 0.7, "pruner.mlp=0.7", "neurons") == [[0, 1], [0, 1, 2]]  # block 0 keeps its last one
    with pytest.raises(StarfishError, match="removes all 4 heads of block 0"):
        lowest_per_block(scores, 0.9, "pruner.heads=0.9", "heads")
    with pytest.raises(StarfishError, match="one left in every block"):
        lowest_overall(scores, 0.9, "pruner.heads=0.9", "heads")


def first_block_branch_outputs(model, batches, branch: str = "attn") -> torch.Tensor:
    """Block 0's attention (or `mlp`) output for every token of `batches` (tokens × 128, float64)."""
    outputs = []
    module = getattr(model.blocks[0], branch)
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out.reshape(-1, 128)))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    return torch.cat(outputs).double()


def test_compensation_keeps_the_mean_output_of_the_first_attention(reference_model, calibration_batches):
    """FLAP's bias compensation: on the calibration images, block 0's attention output keeps its mean
    (its inputs are the dense model's), which it does not without compensation."""
    dense = first_block_branch_outputs(reference_model, calibration_batches).mean(0)
    shifts = {}
    for compensate in (False, True):
        model = copy.deepcopy(reference_model)
        PRUNERS.build({"name": "structured", "compensate": compensate}).prune(model, calibration_batches)
        shifts[compensate] = (first_block_branch_outputs(model, calibration_batches).mean(0) - dense).abs().max().item()
    assert shifts[True] < 1e-4 < shifts[False]


@pytest.mark.parametrize("options,message", [({"heads": 1.0}, "pruner.heads=1.0 is outside"),
                                             ({"mlp": -0.1}, "pruner.mlp=-0.1 is outside"),
                                             ({"criterion": "taylor"}, "pruner.criterion='taylor'"),
                                             ({"scope": "layer"}, "pruner.scope='layer'"),
                                             ({"criterion": "output", "scope": "global"}, "use pruner.scope=block")])
def test_bad_options_are_one_line(options, message):
    with pytest.raises(StarfishError, match=message.replace("(", r"\(")):
        PRUNERS.build({"name": "structured", **options})


@pytest.mark.parametrize("healer,trains", [("starfish", "weights"), ("kd", "weights"), ("norm", "norms and biases")])
def test_healers_train_the_smaller_model(reference_model, calibration_images, calibration_batches, healer, trains):
    student = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "structured", "criterion": "fluctuation"}).prune(student, calibration_batches)
    assert masks == {}  # nothing left to mask
    before = {name: value.clone() for name, value in student.state_dict().items()}
    result = HEALERS.build({"name": healer, "epochs": 1}).heal(student, reference_model, masks, calibration_images,
                                                              torch.device("cpu"))
    changed = {name for name, value in student.state_dict().items() if not torch.equal(value, before[name])}
    linears = {f"{name}.weight" for name in structure_of(student).prunable_layers()}
    assert set(result.trained_parameters) == changed
    assert changed == linears if trains == "weights" else (changed and not changed & linears)


@needs_fmnist
@pytest.mark.parametrize("setting,message", [("pruner.heads=1.0", "pruner.heads=1.0 is outside [0, 1)"),
                                             ("pruner.mlp=-0.1", "pruner.mlp=-0.1 is outside [0, 1)"),
                                             ("pruner.heads=0.9", "removes all 4 heads of block 0")])
def test_bad_structured_settings_exit_2_and_leave_nothing(tmp_path, setting, message):
    result = run_in_process("prune", "pruner=structured", setting, "calib.count=8", cwd=tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert lines[0].startswith("starfish: error:")
    assert list(tmp_path.iterdir()) == []


@needs_fmnist
@pytest.mark.slow
def test_structured_checkpoint_heals_and_evaluates_from_disk(tmp_path):
    settings = ["pruner=structured", "pruner.heads=0.5", "pruner.mlp=0.75", "healer=kd", *SHRUNK, "eval.speed=false"]
    run_in_process("prune", *settings, cwd=tmp_path)
    ran = run_in_process("run", *settings, cwd=tmp_path)  # heals and evaluates the structured checkpoint on disk
    assert "reusing" in ran.stdout + ran.stderr
    pruned_file = next((tmp_path / "outputs").rglob("pruned.safetensors"))
    pruned = load_checkpoint(pruned_file, "prune")
    assert pruned.masks == {} and pruned.metadata["structure"]["blocks.3"] == {"heads": 2, "mlp_hidden": 128}
    assert pruned.weights["blocks.3.attn.qkv.weight"].shape == (192, 128)
    report = read_json(next((tmp_path / "outputs").rglob("kd*/report.json")))
    assert report["sparsity"]["remaining_parameters"] < 0.45 * report["sparsity"]["total_parameters"]
    assert report["healing"]["trained_parameters"] == 24 and report["accuracy"]["healed"]["top1"] > 10
    assert "parameters remain" in next((tmp_path / "outputs").rglob("kd*/report.md")).read_text()


@pytest.mark.parametrize("with_bias", [True, False])
def test_least_squares_folds_removed_inputs_that_the_kept_ones_predict_exactly(with_bias):
    """Removed inputs that are an affine (linear, without a bias) function of the kept ones: folding them
    into the kept columns (and the bias) gives the layer's outputs back exactly, from the moments alone."""
    generator = torch.Generator().manual_seed(0)
    kept_inputs = torch.randn(500, 6, dtype=torch.float64, generator=generator)
    mixing, offset = torch.randn(6, 3, dtype=torch.float64, generator=generator), torch.randn(3, dtype=torch.float64)
    removed_inputs = kept_inputs @ mixing + (offset if with_bias else 0)
    x = torch.cat([kept_inputs[:, :4], removed_inputs, kept_inputs[:, 4:]], 1)  # removed: columns 4, 5, 6
    weight, bias = torch.randn(5, 9, dtype=torch.float64, generator=generator), torch.randn(5, dtype=torch.float64)
    kept_mask = torch.tensor([True] * 4 + [False] * 3 + [True] * 2)
    to_kept, to_bias = least_squares_fold(weight, x.T @ x, x.sum(0), len(x), kept_mask, with_bias, damping=0.0)
    kept = torch.tensor([0, 1, 2, 3, 7, 8])
    folded = x[:, kept] @ (weight[:, kept] + to_kept).T + bias + to_bias
    assert torch.allclose(folded, x @ weight.T + bias, atol=1e-8)
    assert not torch.allclose(x[:, kept] @ weight[:, kept].T + bias, x @ weight.T + bias, atol=1e-2)


def test_least_squares_compensation_keeps_block_outputs_closest(reference_model, calibration_batches):
    """On the calibration images, block 0's attention output of the pruned model is nearer the dense one with
    the least-squares fold than with FLAP's mean, and with the mean than with nothing."""
    dense = first_block_branch_outputs(reference_model, calibration_batches)
    errors = {}
    for compensate in ("none", "mean", "least_squares"):
        model = copy.deepcopy(reference_model)
        PRUNERS.build({"name": "structured", "compensate": compensate}).prune(model, calibration_batches)
        errors[compensate] = (first_block_branch_outputs(model, calibration_batches) - dense).pow(2).mean().item()
    assert errors["least_squares"] < errors["mean"] < errors["none"]


def test_output_order_removes_first_what_the_other_units_can_replace():
    """Three single-column units: 2 copies 0's input with the larger weight, 1 is independent with the smallest.
    By weight alone 1 goes first; by the output after compensation 0 does (2 takes its place exactly), then
    1, whose input nothing else carries. Two-column units (heads) order the same way."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, dtype=torch.float64, generator=generator)
    x[:, 2] = x[:, 0]
    weight = torch.tensor([[1.0, 0.1, 3.0], [0.5, 0.2, 2.0]], dtype=torch.float64)
    assert removal_order(weight, x.T @ x, len(x), torch.arange(3)[:, None]).tolist() == [0.0, 1.0, 2.0]
    assert weight_scores("magnitude", weight, None).sum(0).argmin() == 1
    pairs = torch.cat([x, x * 0.5], 1)  # unit u owns columns u and u + 3
    wide = torch.cat([weight, weight], 1)
    assert removal_order(wide, pairs.T @ pairs, len(x), torch.tensor([[0, 3], [1, 4], [2, 5]])).tolist() \
        == [0.0, 1.0, 2.0]


@pytest.mark.slow
def test_output_criterion_keeps_block_outputs_closer_than_fluctuation(reference_model, calibration_batches):
    """With the same least-squares compensation, choosing neurons by the output leaves block 0's MLP output
    nearer the dense one on the calibration images than FLAP's fluctuation does (both keep the same heads)."""
    dense = first_block_branch_outputs(reference_model, calibration_batches, "mlp")
    errors = {}
    for criterion in ("fluctuation", "output"):
        model = copy.deepcopy(reference_model)
        PRUNERS.build({"name": "structured", "criterion": criterion, "compensate": "least_squares"}).prune(
            model, calibration_batches)
        errors[criterion] = (first_block_branch_outputs(model, calibration_batches, "mlp") - dense).pow(2).mean().item()
    assert errors["output"] < errors["fluctuation"]


def test_the_default_compensation_gives_the_plain_label():
    """`compensate` false and none are the default, so a default run is labelled `structured`, as before the options."""
    for options in ({}, {"compensate": False}, {"compensate": "none"}):
        described = PRUNERS.build({"name": "structured", **options}).describe()
        assert PRUNERS.label(described, ("name", "sparsity", "pattern", "seed")) == "structured"
    assert PRUNERS.label(PRUNERS.build({"name": "structured", "compensate": True}).describe()) \
        == "structured[compensate=mean]"
