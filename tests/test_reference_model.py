import pytest
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


@pytest.mark.slow  # the evaluation stage over the whole test split
def test_the_medium_lm_loads_offline_and_starfish_measures_the_perplexity_it_was_shipped_with():
    """lm_medium (issue 23's reference LM where pruning hurts): its folder loads by name, stays within the
    25 MB the package allows, and starfish's evaluation of data=fortunes_jargon's test split gives the test
    perplexity its training recorded."""
    pytest.importorskip("transformers")
    import json

    import torch

    from starfish_cli.data import DATASETS
    from starfish_cli.evaluation.metrics import next_token_nll, perplexity
    from starfish_cli.models import build_model, structure_of
    from starfish_cli.models.causal_lm import EMBEDDED

    folder = EMBEDDED["lm_medium"]
    assert sum(path.stat().st_size for path in folder.iterdir()) < 25_000_000
    training = json.loads((folder / "training.json").read_text())
    assert training["args"]["data"] == "fortunes_jargon"
    structure = structure_of(build_model({"family": "causal_lm", "name": "lm_medium"}))
    assert sum(p.numel() for p in structure.model.parameters()) > 3_000_000
    windows, _ = DATASETS.build({"name": "fortunes_jargon"}).evaluation_items(None, **structure.preprocessing())
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.windows.split(64):
            nll = next_token_nll(structure.model(input_ids=batch).logits, batch)
            total, count = total + nll.sum().item(), count + nll.numel()
    assert perplexity(total, count) == pytest.approx(training["perplexity"]["test"], rel=2e-3)
