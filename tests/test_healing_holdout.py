"""Early stopping on held-out calibration items (healing/holdout.py) in the one loop, its report and its refusals."""

import copy

import pytest
import torch

from conftest import run_in_process
from test_configs import compose_config
from starfish_cli.healing import HEALERS
from starfish_cli.healing.holdout import EarlyStopping, split_holdout
from starfish_cli.healing.states import collect_states, state_alignment_loss
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing.holdout import check_holdout
from starfish_cli.stages.settings import check_config

CPU = torch.device("cpu")


class Items(torch.utils.data.Dataset):
    def __init__(self, count: int):
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return index, torch.full((2,), float(index))


def test_split_is_seeded_disjoint_and_keeps_indices():
    fit, held = split_holdout(Items(40), 0.25, seed=1)
    assert (len(fit), len(held)) == (30, 10)
    fit_indices = {fit[i][0] for i in range(len(fit))}
    held_indices = {held[i][0] for i in range(len(held))}
    assert not fit_indices & held_indices and fit_indices | held_indices == set(range(40))
    assert all(float(held[i][1][0]) == held[i][0] for i in range(len(held)))  # items travel with their index
    assert held.indices == split_holdout(Items(40), 0.25, seed=1)[1].indices
    assert held.indices != split_holdout(Items(40), 0.25, seed=2)[1].indices
    whole, none = split_holdout(Items(40), 0.0, seed=1)
    assert none is None and len(whole) == 40


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_split_leaves_an_item_on_each_side(fraction):
    with pytest.raises(StarfishError, match=f"healer.holdout={fraction} of 10 calibration items"):
        split_holdout(Items(10), fraction, seed=0)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    weight = torch.nn.Parameter(torch.zeros(()))

    def loss(batch, _forward):  # the held-out loss is lowest at weight 3
        return (weight - 3) ** 2 + 0 * batch[1].sum()

    stopping = EarlyStopping(Items(6), loss, None, {"w": weight}, 4, 2, CPU, torch.float32, "job")
    for epoch, value in enumerate([0.0, 3.0, 5.0]):
        weight.data.fill_(value)
        assert not stopping.observe(epoch)
    weight.data.fill_(10.0)
    assert stopping.observe(3)  # two epochs past the best
    stopping.finish()
    assert float(weight.detach()) == 3.0
    assert stopping.record == {"job": "job", "items": 6, "epochs": [0, 1, 2, 3], "losses": [9.0, 0.0, 4.0, 49.0],
                               "best_epoch": 1}


@pytest.fixture()
def pruned(reference_model):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.75}).prune(model)
    return model, masks


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["end_to_end", "blockwise"])
def test_healing_ends_with_the_best_held_out_weights(reference_model, pruned, calibration_images, mode):
    model, masks = pruned
    healer = HEALERS.build({"name": "starfish", "epochs": 2, "batch_size": 16, "holdout": 0.25, "mode": mode},
                           seed=4)
    result = healer.heal(model, reference_model, masks, calibration_images, CPU)
    blocks = len(collect_states(model, calibration_images[0][1][None])[1])
    assert len(result.holdout) == (1 if mode == "end_to_end" else blocks)
    assert result.steps == 2 * 3 * len(result.holdout)  # 48 of 64 images train: 3 batches of 16 an epoch
    for record in result.holdout:
        assert record["items"] == 16 and record["epochs"] == [0, 1, 2]
        assert record["losses"][record["best_epoch"]] == min(record["losses"])
    if mode == "end_to_end":  # the model ends with the kept epoch's weights: its held-out loss is the minimum
        held = split_holdout(calibration_images, 0.25, seed=4)[1]
        images = torch.stack([held[i][1] for i in range(len(held))])
        with torch.no_grad():
            loss = state_alignment_loss(collect_states(model, images)[1], collect_states(reference_model, images)[1])
        assert float(loss) == pytest.approx(min(result.holdout[0]["losses"]), rel=1e-4)
    for name, mask in masks.items():
        assert not dict(model.named_modules())[name].weight[~mask].any()


def test_patience_stops_healing_early(reference_model, pruned, calibration_images):
    model, masks = pruned  # at this learning rate the held-out loss stops improving within a few epochs
    healer = HEALERS.build({"name": "starfish", "epochs": 12, "batch_size": 16, "lr": 0.05, "holdout": 0.25,
                            "patience": 1})
    result = healer.heal(model, reference_model, masks, calibration_images, CPU)
    record = result.holdout[0]
    assert record["epochs"][-1] == record["best_epoch"] + 1 < 12
    assert result.steps == 3 * record["epochs"][-1]


@pytest.mark.parametrize("node,message", [
    ({"name": "starfish", "patience": 2}, "healer.patience=2 counts epochs of the held-out loss"),
    ({"name": "starfish", "holdout": 1.0}, "healer.holdout"),
    ({"name": "starfish", "holdout": 0.2, "schedule": [0.5]}, "healer.schedule changes them"),
    ({"name": "starfish", "holdout": 0.2, "augment": ["flip"]}, "healer.augment trains on new views"),
    ({"name": "kd", "patience": 1}, "healer.patience=1"),
])
def test_bad_holdout_config(node, message):
    with pytest.raises(StarfishError, match=message):
        HEALERS.build(node)


@pytest.mark.parametrize("args,message", [
    (["calib.count=4", "healer.holdout=0.1"], "healer.holdout=0.1 of 4 calibration items holds out 0"),
    (["healer.patience=3"], "healer.patience=3 counts epochs of the held-out loss"),
    (["healer.holdout=0.2", "healer.schedule=[0.5]"], "healer.schedule changes them"),
])
def test_bad_holdout_on_the_command_line_is_one_line_exit_2_before_pruning(tmp_path, args, message):
    result = run_in_process("run", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_holdout_under_torchrun_is_refused_from_the_config(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StarfishError, match="healer.holdout runs in one process"):
        check_config(compose_config("starfish", ["healer.holdout=0.125"]), ("prune", "heal", "eval"))
    check_holdout(0.0, 128, 2)  # off: nothing to refuse
