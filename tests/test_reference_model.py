import timm
from safetensors import safe_open

from starfish_cli.models.vit_fmnist import ASSET_PATH


def test_shipped_weights_load_offline_through_timm():
    model = timm.create_model("vit_fmnist", pretrained=True)
    fresh = timm.create_model("vit_fmnist", pretrained=False)
    assert model.pretrained_cfg["file"] == str(ASSET_PATH)
    assert not all((a == b).all() for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert ASSET_PATH.stat().st_size < 10_000_000


def test_shipped_weights_record_their_training():
    with safe_open(str(ASSET_PATH), framework="pt") as handle:
        metadata = handle.metadata()
    assert float(metadata["test_top1"]) >= 88.0
    assert "train_reference.py" in metadata["command"]


def test_data_config_comes_from_the_model():
    config = timm.data.resolve_data_config(model=timm.create_model("vit_fmnist"))
    assert config["input_size"] == (1, 28, 28) and len(config["mean"]) == 1
