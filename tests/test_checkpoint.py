import copy

import pytest
import timm
import torch
from safetensors.torch import save_file

from starfish_cli.artifacts.checkpoint import load_checkpoint, restore, save_checkpoint
from starfish_cli.pruning.masks import masks_digest
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.pruning import PRUNERS


@pytest.fixture()
def saved(tmp_path, reference_model):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(model)
    path = tmp_path / "pruned.safetensors"
    save_checkpoint(path, model, masks, {"stage": "pruned", "model": {"name": "vit_fmnist"}})
    return path, model, masks


def test_roundtrip_restores_weights_masks_and_metadata(saved, reference_model):
    path, model, masks = saved
    checkpoint = load_checkpoint(path, "prune")
    assert checkpoint.metadata["stage"] == "pruned" and checkpoint.metadata["masks_digest"] == masks_digest(masks)
    fresh = copy.deepcopy(reference_model)
    restored_masks = restore(fresh, checkpoint, path)
    assert all(torch.equal(restored_masks[k], masks[k]) for k in masks)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert [p.name for p in path.parent.iterdir()] == ["pruned.safetensors"]  # no temp file left


def test_missing_checkpoint(tmp_path):
    with pytest.raises(StarfishError, match="run `starfish prune`"):
        load_checkpoint(tmp_path / "pruned.safetensors", "prune")


def test_truncated_checkpoint(saved):
    path, _, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StarfishError, match="truncated"):
        load_checkpoint(path, "prune")


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(StarfishError, match="not a starfish checkpoint"):
        load_checkpoint(path, "prune")


def test_foreign_architecture(saved):
    path, _, _ = saved
    other = timm.create_model("vit_fmnist", pretrained=False, depth=2)
    with pytest.raises(StarfishError, match="different architecture"):
        restore(other, load_checkpoint(path, "prune"), path)


def test_metadata_is_read_from_the_header_alone(saved, tmp_path):
    from starfish_cli.artifacts.checkpoint import read_metadata

    path, _, masks = saved
    assert read_metadata(path)["masks_digest"] == masks_digest(masks)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    assert read_metadata(foreign) is None and read_metadata(tmp_path / "junk.safetensors") is None
    assert read_metadata(tmp_path / "missing.safetensors") is None
