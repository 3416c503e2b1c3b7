"""End-to-end healing's memory per device, estimated before anything runs: a model that does not fit the
budget is refused in one line naming block-wise healing and the FSDP2 device count that fits."""

import pytest

from conftest import needs_fmnist, run_cli
from starfish_cli.healing import HEALERS
from starfish_cli.healing.footprint import Footprint, check_fits, end_to_end_footprint
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


@needs_fmnist
@pytest.mark.slow
def test_a_budget_too_small_is_one_line_naming_the_ways_that_fit(reference_model, tmp_path):
    healer = HEALERS.build({"name": "starfish"})
    trained = sum(p.numel() for n, p in reference_model.named_parameters() if n in healer.trainable_names(reference_model))
    needed = end_to_end_footprint(reference_model, trained, 32).devices_needed(int(0.05e9))
    result = run_cli("run", "memory_budget=0.05", "healer.batch_size=32", "hydra.run.dir=run", cwd=tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"use healer.mode=blockwise, or dist_strategy=fsdp across {needed} devices" in lines[0] and needed > 1
    assert not (tmp_path / "run").exists()
