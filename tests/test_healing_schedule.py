"""Gradual prune → heal (healer.schedule): nested stage masks, the step split, and the final masks exactly."""

import copy

import pytest
import torch

from conftest import run_in_process
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.models import structure_of
from starfish_cli.healing import HEALERS
from starfish_cli.healing.schedule import split_steps, stage_masks
from starfish_cli.pruning import PRUNERS
from starfish_cli.reporting.report import render_markdown
from starfish_cli.stages.settings import check_schedule_below_pruner

CPU = torch.device("cpu")


@pytest.fixture()
def pruned(reference_model):
    """Magnitude 75%, with the kept weights moved off their dense values (as SparseGPT's reconstruction does)."""
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.75}).prune(model)
    with torch.no_grad():
        for layer in structure_of(model).prunable_layers().values():
            layer.weight.mul_(1.5)
    return model, masks


def test_stage_masks_restore_the_largest_dense_weights_first():
    final = torch.tensor([[True, False, False, False], [False, False, False, True]])  # 6 of 8 pruned
    dense = torch.tensor([[9.0, -5.0, 1.0, 3.0], [-4.0, 2.0, 0.5, 9.0]])
    quarter, half, last = stage_masks(final, dense, [0.25, 0.5])
    assert half.tolist() == [[True, True, False, False], [True, False, False, True]]  # |−5|, |−4| back: 4 pruned
    assert quarter.tolist() == [[True, True, False, True], [True, True, False, True]]  # and 3, 2: 2 pruned
    assert torch.equal(last, final)


def test_stage_masks_of_a_pruned_model_are_nested_at_their_sparsities(reference_model, pruned):
    _, masks = pruned
    dense = structure_of(reference_model).prunable_layers()
    for name, final in masks.items():
        stages = stage_masks(final, dense[name].weight, [0.3, 0.5, 0.7])
        for sparsity, mask in zip([0.3, 0.5, 0.7], stages):
            assert abs(int((~mask).sum()) - sparsity * mask.numel()) <= 1, name
        for wider, narrower in zip(stages, stages[1:]):
            assert torch.all(narrower <= wider), name  # what a stage keeps, the one before kept too
        assert torch.equal(stages[-1], final)


@pytest.mark.parametrize("total,intermediate,share,expected", [
    (8, 1, 0.5, [4, 4]), (8, 2, 0.5, [2, 2, 4]), (10, 3, 0.6, [2, 2, 2, 4]), (2, 2, 0.9, [0, 0, 2]),
    (0, 2, 0.5, [0, 0, 0]),
])
def test_split_steps(total, intermediate, share, expected):
    assert split_steps(total, intermediate, share) == expected


def test_scheduled_heal_ends_at_the_final_masks_on_the_same_budget(reference_model, pruned, calibration_images,
                                                                   monkeypatch):
    model, masks = pruned
    layers = structure_of(model).prunable_layers()
    dense = structure_of(reference_model).prunable_layers()
    before = {name: layer.weight.clone() for name, layer in layers.items()}
    healer = HEALERS.build({"name": "starfish", "epochs": 2, "batch_size": 16, "schedule": [0.4, 0.6]})
    import starfish_cli.healing.gradual as gradual

    starts, train = [], gradual.train

    def spy(job, *args, **kwargs):  # each stage's masks and weights as it starts
        starts.append((job.masks, {name: layer.weight.clone() for name, layer in layers.items()}, job.steps))
        return train(job, *args, **kwargs)

    monkeypatch.setattr(gradual, "train", spy)
    result = healer.heal(model, reference_model, masks, calibration_images, CPU)
    # 64 images in batches of 16: 4 per epoch, 8 in all; half to the two intermediate stages
    assert result.steps == 8 == len(result.loss_history)
    assert [stage["steps"] for stage in result.stages] == [s for _, _, s in starts] == [2, 2, 4]
    assert [stage["sparsity"] for stage in result.stages] == pytest.approx([0.4, 0.6, 0.75], abs=1e-3)
    first, weights, _ = starts[0]
    for name, final in masks.items():
        extra = first[name] & ~final
        assert torch.equal(weights[name][final], before[name][final])  # the pruner's values where it keeps
        assert torch.equal(weights[name][extra], dense[name].weight[extra])  # the dense ones it restores
        assert torch.all(weights[name][~first[name]] == 0)
    second, weights, _ = starts[1]
    for name in masks:
        assert not torch.any(torch.signbit(weights[name][~second[name]]))  # newly pruned: +0.0
        assert torch.all(weights[name][~second[name]] == 0)
    for name, final in masks.items():
        weight = layers[name].weight
        assert torch.all(weight[~final] == 0) and not torch.any(torch.signbit(weight[~final])), name
        assert not torch.equal(weight[final], before[name][final]), name  # the kept weights trained


@pytest.mark.parametrize("name", ["starfish", "kd"])
def test_empty_schedule_heals_bit_for_bit_as_without_it(reference_model, pruned, calibration_images, name):
    model, masks = pruned
    healed = []
    for node in ({"name": name, "epochs": 1}, {"name": name, "epochs": 1, "schedule": [], "schedule_share": 0.3}):
        student = copy.deepcopy(model)
        result = HEALERS.build(node).heal(student, reference_model, masks, calibration_images, CPU)
        healed.append((student.state_dict(), result.loss_history, result.stages))
    (first, losses, stages), (second, losses_again, stages_again) = healed
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert losses == losses_again and stages == stages_again == []


@pytest.mark.parametrize("node,message", [
    ({"schedule": [0.6, 0.4]}, "strictly ascending"),
    ({"schedule": [0.5, 0.5]}, "strictly ascending"),
    ({"schedule": [0.0, 0.5]}, "in (0, 1)"),
    ({"schedule": [1.0]}, "in (0, 1)"),
    ({"schedule": ["half"]}, "each a number in (0, 1)"),
    ({"schedule": [0.5], "schedule_share": 1.0}, "healer.schedule_share=1.0 must be a number in (0, 1)"),
    ({"schedule_share": 0}, "healer.schedule_share=0 must be a number in (0, 1)"),
    ({"schedule": [0.5], "mode": "blockwise"}, "healer.mode=blockwise"),
    ({"name": "kd", "schedule": [0.5, 0.2]}, "strictly ascending"),
])
def test_bad_schedule(node, message):
    with pytest.raises(StarfishError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HEALERS.build({"name": "starfish", **node})


def test_schedule_at_or_above_a_layer_target_fails_before_healing(reference_model, pruned, calibration_images):
    model, masks = pruned
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(StarfishError, match="below each layer's final one, and blocks.* ends at 0.7500"):
        HEALERS.build({"name": "starfish", "schedule": [0.5, 0.75]}).heal(
            model, reference_model, masks, calibration_images, CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_schedule_with_a_structurally_pruned_model_fails(reference_model, calibration_images):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "structured", "criterion": "magnitude"}).prune(model)
    with pytest.raises(StarfishError, match="pruner=structured"):
        HEALERS.build({"name": "kd", "schedule": [0.5]}).heal(model, reference_model, masks, calibration_images, CPU)


def test_report_says_how_the_steps_were_split():
    healing = {"steps": 8, "stages": [{"sparsity": 0.4, "steps": 2}, {"sparsity": 0.6, "steps": 2},
                                      {"sparsity": 0.75, "steps": 4}]}
    assert "8 steps, in stages 0.4 → 0.6 → 0.75 sparsity: 2 + 2 + 4 steps" in render_markdown({"healing": healing})
    assert "8 steps\n" in render_markdown({"healing": {"steps": 8}})


@pytest.mark.parametrize("args,message", [
    (["healer.schedule=[0.75,0.5]"], "strictly ascending"),
    (["healer.schedule=[0.95]"], "healer.schedule=[0.95]: every sparsity must be below the pruner's final one, "
                                 "and pruner.sparsity=0.75 prunes to 0.75"),  # the default pruner: Wanda 75%
    (["healer.schedule=[0.5,0.75]"], "and pruner.sparsity=0.75 prunes to 0.75"),
    (["pruner.pattern=2:4", "healer.schedule=[0.5]"], "and pruner.pattern=2:4 prunes to 0.5"),
    # a sweep: its second run's pruner, before the first run starts
    (["-m", "pruner.sparsity=0.9,0.5", "healer.schedule=[0.6]"], "and pruner.sparsity=0.5 prunes to 0.5"),
])
def test_bad_schedule_on_the_command_line_is_one_line_exit_2_before_pruning(tmp_path, args, message):
    result = run_in_process("run", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr
    assert "pruning (" not in result.stdout + result.stderr  # refused from the config, before any pruning
    assert list(tmp_path.iterdir()) == []


def test_schedule_below_the_pruners_sparsity_passes_the_config_check():
    def pruner(**node):
        return PRUNERS.build({"name": "wanda", **node})

    check_schedule_below_pruner([0.5, 0.7], pruner(sparsity=0.75))
    check_schedule_below_pruner([0.4], pruner(sparsity=0.75, pattern="2:4"))  # 0.5
    check_schedule_below_pruner([0.5, 0.75], pruner(sparsity=0.9))
    check_schedule_below_pruner([], pruner(sparsity=0.5))
    # not known from the config: the masks are checked when healing starts (check_targets)
    check_schedule_below_pruner([0.95], pruner(sparsity={"blocks.0.*": 0.25, "*": 0.5}))
    check_schedule_below_pruner([0.95], PRUNERS.build({"name": "structured"}))
    with pytest.raises(StarfishError, match=r"pruner.pattern=1:4 prunes to 0.75"):
        check_schedule_below_pruner([0.8], pruner(pattern="1:4"))
