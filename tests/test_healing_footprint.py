"""End-to-end healing's memory per device, estimated before anything runs: a model that does not fit the
budget is refused in one line naming block-wise healing and the FSDP2 device count that fits."""

import pytest
import torch

from conftest import needs_fmnist, run_in_process
from starfish_cli.healing import HEALERS
from starfish_cli.healing.footprint import (
    ACTIVATION_BYTES, Footprint, check_fits, end_to_end_footprint, tokens_per_item,
)
from starfish_cli.runtime.errors import StarfishError


def test_the_fewest_devices_that_fit():
    footprint = Footprint(fixed=10, sharded=100)
    assert footprint.per_device(1) == 110 and footprint.per_device(4) == 35
    needed = footprint.devices_needed(40)
    assert footprint.per_device(needed) <= 40 < footprint.per_device(needed - 1)
    assert footprint.devices_needed(10) is None  # the unsharded part alone fills it
    check_fits(footprint, 110, 1, "m")
    check_fits(footprint, 40, needed, "m")  # sharded over enough devices: fits
    with pytest.raises(StarfishError, match=f"healer.mode=blockwise, or dist_strategy=fsdp across {needed} devices"):
        check_fits(footprint, 40, 1, "m")
    with pytest.raises(StarfishError, match="FSDP2 cannot"):
        check_fits(footprint, 10, 1, "m")


def test_the_estimate_counts_teacher_student_trained_state_and_activations(reference_model):
    healer = HEALERS.build({"name": "starfish"})
    trained = sum(p.numel() for n, p in reference_model.named_parameters() if n in healer.trainable_names(reference_model))
    small, large = (end_to_end_footprint(reference_model, trained, batch) for batch in (8, 32))
    total = sum(p.numel() for p in reference_model.parameters())
    assert small.fixed == large.fixed >= 4 * total  # the whole teacher, at least
    assert large.sharded > small.sharded > 4 * 4 * trained  # weights, gradient, Adam's moments, plus activations
    # a ViT's items are its 49 patches and the class token, whatever the calibration images
    assert tokens_per_item(reference_model, [(0, torch.zeros(1, 28, 28))]) == 50
    assert end_to_end_footprint(reference_model, trained, 8, 50) == small


def test_activations_follow_the_calibration_windows_not_the_context():
    """A causal LM's activations are those of a batch of calibration windows (calib.seq_len), not of its context:
    SmolLM2-135M's 8k context at 2,048 tokens asked 79 GB where 128-token windows take under 8."""
    from starfish_cli.models import build_model

    model = build_model({"family": "causal_lm", "name": "lm_reference"})  # 4 layers, 128 wide, a 128-token context
    windows = [(index, torch.zeros(32, dtype=torch.long)) for index in range(4)]  # items as the calibration gives them
    assert tokens_per_item(model, windows) == 32
    blocks, width = 4, 128
    at = {(batch, tokens): end_to_end_footprint(model, 0, batch, tokens) for batch in (8, 32) for tokens in (32, 128)}
    for (batch, tokens), footprint in at.items():  # the fixed and weight parts are the same; activations scale
        assert footprint.sharded - at[(8, 32)].sharded == ACTIVATION_BYTES * 2 * blocks * width * (batch * tokens - 8 * 32)
        assert footprint.fixed == at[(8, 32)].fixed
    assert end_to_end_footprint(model, 0, 8).sharded == at[(8, 128)].sharded  # no tokens given: the context


@needs_fmnist
def test_a_budget_too_small_is_one_line_naming_the_ways_that_fit(reference_model, tmp_path):
    healer = HEALERS.build({"name": "starfish"})
    trained = sum(p.numel() for n, p in reference_model.named_parameters() if n in healer.trainable_names(reference_model))
    needed = end_to_end_footprint(reference_model, trained, 32).devices_needed(int(0.05e9))
    result = run_in_process("run", "memory_budget=0.05", "healer.batch_size=32", "hydra.run.dir=run", cwd=tmp_path,
                            check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"use healer.mode=blockwise, or dist_strategy=fsdp across {needed} devices" in lines[0] and needed > 1
    assert not (tmp_path / "run").exists()
