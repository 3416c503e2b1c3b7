"""Any timm ViT/DeiT works: blocks and prunable layers come from the model itself."""

import copy

import pytest
import timm
import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing import HEALERS
from starfish_cli.models import structure_of
from starfish_cli.models.vision import build_model
from starfish_cli.pruning import PRUNERS


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, count, shape):
        self.images = torch.randn((count, *shape), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return index, self.images[index]


SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


@pytest.mark.parametrize("name,kwargs,prefix_tokens", [
    ("vit_tiny_patch16_224", dict(SMALL, global_pool="avg", class_token=False), 0),
    ("deit_tiny_distilled_patch16_224", SMALL, 2),
    ("deit3_small_patch16_224", SMALL, 1),
])
def test_timm_variants_prune_and_heal_unchanged(name, kwargs, prefix_tokens):
    torch.manual_seed(0)  # random init: the same weights whatever ran before
    model = build_model(name, pretrained=False, kwargs=kwargs)
    assert set(structure_of(model).prunable_layers()) == {f"blocks.{b}.{l}" for b in range(2)
                                           for l in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    images = torch.randn(2, 3, 32, 32)
    logits, states = structure_of(model).forward_with_states(images)
    assert logits.shape == (2, 5) and len(states) == 2 and states[0].shape[1] == 16 + prefix_tokens
    # the same values as timm's forward_intermediates (prefix tokens joined back in front) and forward
    final, intermediates = model.forward_intermediates(images, output_fmt="NLC", return_prefix_tokens=True)
    for state, item in zip(states, intermediates, strict=True):
        spatial, prefix = item if isinstance(item, tuple) else (item, None)
        assert torch.equal(state, spatial if prefix is None else torch.cat([prefix, spatial], dim=1))
    assert torch.equal(logits, model.forward_head(final)) and torch.equal(logits, model(images))
    no_logits, same_states = structure_of(model).forward_with_states(images, with_outputs=False)
    assert no_logits is None and all(torch.equal(a, b) for a, b in zip(states, same_states, strict=True))
    student = copy.deepcopy(model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(student)
    result = HEALERS.build({"name": "starfish", "epochs": 2, "batch_size": 4}).heal(
        student, model, masks, RandomImages(8, (3, 32, 32)), torch.device("cpu"))
    assert result.steps == 4 and result.loss_history[-1] < result.loss_history[0]
    for layer_name, layer in structure_of(student).prunable_layers().items():
        assert torch.all(layer.weight[~masks[layer_name]] == 0)


def test_local_checkpoint_path(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("vit_fmnist", pretrained=False)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_model("vit_fmnist", pretrained=False, checkpoint_path=str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))


def test_unknown_model_and_missing_checkpoint(tmp_path):
    with pytest.raises(StarfishError, match="unknown model 'vit_nope'"):
        build_model("vit_nope")
    with pytest.raises(StarfishError, match="does not exist"):
        build_model("vit_fmnist", checkpoint_path=str(tmp_path / "missing.safetensors"))


def test_hub_failure_is_actionable(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(StarfishError, match="checkpoint_path"):
        build_model("deit_tiny_patch16_224", pretrained=True)


def test_a_local_checkpoint_keeps_its_classifier_and_the_users_overlay(tmp_path):
    from safetensors.torch import save_file

    shape = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=2)
    source = timm.create_model("vit_small_patch16_224", pretrained=False, **shape)
    path = tmp_path / "grey.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_model("vit_small_patch16_224", checkpoint_path=str(path),
                         kwargs={**shape, "pretrained_cfg_overlay": {"crop_pct": 1.0}})
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    config = timm.data.resolve_data_config(model=loaded)
    assert config["crop_pct"] == 1.0 and config["input_size"] == (1, 28, 28)
    assert len(config["mean"]) == 1 and config["mean"][0] == pytest.approx(sum(source.pretrained_cfg["mean"]) / 3)
    own = build_model("vit_small_patch16_224", checkpoint_path=str(path), kwargs=shape,
                      data_config={"mean": [0.5], "std": 0.25, "interpolation": "bilinear"})
    config = timm.data.resolve_data_config(model=own)
    assert config["mean"] == (0.5,) and config["std"] == (0.25,) and config["interpolation"] == "bilinear"
    with pytest.raises(StarfishError, match="has no key 'means'"):
        build_model("vit_fmnist", data_config={"means": [0.5]})
