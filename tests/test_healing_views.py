"""Consistent augmented views (function matching): the view math on small tensors, and STARFISH
healing that shows the student and the recomputed teacher the same view every step."""

import copy

import pytest
import torch

from conftest import run_in_process
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing import HEALERS
from starfish_cli.healing.starfish import StarfishHealer
from starfish_cli.healing.views import CalibrationViews, flip_images, mix_images, paste_boxes, shift_images
from starfish_cli.pruning import PRUNERS

CPU = torch.device("cpu")


def shifted_by_indexing(images, dy, dx):
    """Reference: pixel (y, x) of the shifted image is the input's (y − dy, x − dx), clamped to the image."""
    height, width = images.shape[-2:]
    rows = (torch.arange(height) - dy).clamp(0, height - 1)
    columns = (torch.arange(width) - dx).clamp(0, width - 1)
    return images[..., rows, :][..., columns]


def batch(count=6, seed=0):
    return torch.randn(count, 3, 5, 7, generator=torch.Generator().manual_seed(seed))


def test_shift_moves_pixels_and_replicates_edges():
    image = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(1, 1, 2, 3)
    # one row down, one column left: the top row and the right column repeat the edge
    assert shift_images(image, torch.tensor([[1, -1]])).view(2, 3).tolist() == [[2, 3, 3], [2, 3, 3]]
    images = batch()
    offsets = torch.tensor([[2, -1], [0, 0], [-2, 2], [1, 1], [-1, 0], [0, -2]])
    shifted = shift_images(images, offsets)
    for number, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(shifted[number], shifted_by_indexing(images[number], dy, dx))


def test_flip_mirrors_the_chosen_images():
    images = batch(2)
    flipped = flip_images(images, torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])


def test_mixup_and_cutmix_take_only_pixels_of_the_two_images():
    images = batch(3)
    mixed = mix_images(images, torch.tensor([2, 0, 1]), torch.tensor([0.25, 1.0, 0.5]))
    assert torch.allclose(mixed[0], 0.25 * images[0] + 0.75 * images[2])
    assert torch.equal(mixed[1], images[1])
    pasted = paste_boxes(images, torch.tensor([1, 2, 0]), torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 5, 7]]))
    expected = images[0].clone()
    expected[:, 1:4, 2:6] = images[1][:, 1:4, 2:6]
    assert torch.equal(pasted[0], expected)
    assert torch.equal(pasted[1], images[1]) and torch.equal(pasted[2], images[0])  # empty box, whole image


def test_views_are_translated_mirrored_or_mixed_copies():
    images = batch(8)
    shifted = CalibrationViews(["shift"], shift=2, seed=1)(images)
    for number in range(len(images)):
        assert any(torch.equal(shifted[number], shifted_by_indexing(images[number], dy, dx))
                   for dy in range(-2, 3) for dx in range(-2, 3))
    flipped = CalibrationViews(["flip"], seed=1)(images)
    mirrored = [torch.equal(flipped[n], images[n].flip(-1)) for n in range(len(images))]
    assert all(mirrored[n] or torch.equal(flipped[n], images[n]) for n in range(len(images)))
    assert 0 < sum(mirrored) < len(images)
    for name in ("mixup", "cutmix"):
        mixed = CalibrationViews([name], mix_alpha=0.4, seed=1)(images)
        low, high = images.min(0).values, images.max(0).values  # convex in the batch, pixel by pixel
        assert torch.all(mixed >= low - 1e-6) and torch.all(mixed <= high + 1e-6)
        assert not torch.equal(mixed, images)


def test_same_seed_same_views_other_seed_other_views_global_rng_untouched():
    images, every = batch(), ["flip", "shift", "mixup", "cutmix"]
    global_state = torch.get_rng_state()
    first, again = CalibrationViews(every, seed=3), CalibrationViews(every, seed=3)
    views = [first(images), first(images)]
    assert torch.equal(views[0], again(images)) and torch.equal(views[1], again(images))
    assert not torch.equal(views[0], views[1])  # every call draws a new view
    assert not torch.equal(views[0], CalibrationViews(every, seed=4)(images))
    assert torch.equal(torch.get_rng_state(), global_state)


def test_no_augmentation_returns_the_batch_and_draws_nothing():
    images, views = batch(), CalibrationViews([], seed=0)
    state = views.generator.get_state()
    assert views(images) is images
    assert torch.equal(views.generator.get_state(), state)
    healer = HEALERS.build({"name": "starfish"})
    assert healer.step_inputs((torch.arange(6), images), CPU) is images  # the reference path, op for op


def test_views_refuse_token_batches():
    with pytest.raises(StarfishError, match="healer.augment needs image batches"):
        CalibrationViews(["flip"])(torch.zeros(2, 8, dtype=torch.long))


def test_student_and_teacher_see_the_same_view_every_step(reference_model, calibration_images, monkeypatch):
    student = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.75}).prune(student)
    teacher = copy.deepcopy(reference_model)  # the session's model stays unhooked
    raw, seen = [], {"student": [], "teacher": []}
    for who, model in (("student", student), ("teacher", teacher)):
        model.patch_embed.register_forward_pre_hook(lambda _m, args, who=who: seen[who].append(args[0].clone()))
    step_inputs = StarfishHealer.step_inputs

    def recorded_step_inputs(self, batch, device):
        raw.append(batch[1].clone())
        return step_inputs(self, batch, device)

    monkeypatch.setattr(StarfishHealer, "step_inputs", recorded_step_inputs)
    healer = HEALERS.build({"name": "starfish", "epochs": 2, "batch_size": 64, "augment": ["flip", "shift", "mixup"]})
    result = healer.heal(student, teacher, masks, calibration_images, CPU)
    assert result.steps == 2 and len(raw) == 2  # the teacher ran on each view only: no cache was made
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    for step in range(2):
        assert torch.equal(seen["student"][step], seen["teacher"][step])
        assert not torch.equal(seen["student"][step], raw[step])
    assert torch.equal(raw[0], raw[1]) and not torch.equal(seen["student"][0], seen["student"][1])
    assert healer.describe()["augment"] == ["flip", "shift", "mixup"]


@pytest.mark.parametrize("options,message", [
    ({"augment": ["rotate"]}, "healer.augment=['rotate'] must be a list, each one of flip, shift, mixup, cutmix"),
    ({"augment": ["shift"], "shift": -1}, "healer.shift=-1 must be a whole number ≥ 0"),
    ({"augment": ["mixup"], "mix_alpha": 0}, "healer.mix_alpha=0 must be a number > 0"),
    ({"augment": ["flip"], "teacher": "host"}, "healer.teacher=host caches targets of the raw images"),
    ({"augment": ["flip"], "teacher": "gpu"}, "healer.teacher=gpu caches targets of the raw images"),
    ({"augment": ["flip"], "mode": "blockwise"}, "healer.mode=blockwise heals on cached block inputs"),
])
def test_bad_view_options_are_one_line_errors(options, message):
    with pytest.raises(StarfishError, match=r"^[^\n]*$") as error:
        HEALERS.build({"name": "starfish", **options})
    assert message in str(error.value)


def test_cli_refuses_an_unknown_augmentation_with_exit_2(tmp_path):
    result = run_in_process("heal", "healer.augment=[rotate]", cwd=tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "healer.augment=['rotate']" in lines[0], result.stderr[-2000:]
    assert lines[0].startswith("starfish: error:") and list(tmp_path.iterdir()) == []
